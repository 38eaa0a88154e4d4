import pyro
import pyro.distributions as dist
import pytest

from pyroflows.infer import AutoFlow, fit, neutra


@pytest.fixture(autouse=True)
def clean_param_store():
    pyro.clear_param_store()
    yield
    pyro.clear_param_store()


def funnel(dim=4):
    v = pyro.sample("v", dist.Normal(0.0, 3.0))
    with pyro.plate("x_plate", dim):
        pyro.sample("x", dist.Normal(0.0, (v / 2).exp()))


@pytest.mark.slow  # about two minutes: a flow fit and 1000 NUTS iterations
def test_neutra_samples_the_funnel_with_chains_and_few_divergences():
    guide = AutoFlow(funnel)
    fit(funnel, guide, num_steps=800, progress=False, seed=0)
    idata, stats = neutra(funnel, guide, num_samples=300, warmup_steps=200, num_chains=2, seed=0)
    v = idata.posterior["v"]
    assert v.shape == (2, 300) and idata.posterior["x"].shape == (2, 300, 4)
    assert idata.sample_stats["diverging"].shape == (2, 300)
    assert stats["divergences"] <= 0.01 * 600
    assert abs(float(v.mean())) < 0.6 and abs(float(v.std()) / 3.0 - 1) < 0.2  # exact v ~ N(0, 3)


def test_neutra_rejects_other_guides():
    with pytest.raises(TypeError, match="AutoFlow"):
        neutra(funnel, pyro.infer.autoguide.AutoNormal(funnel))
