"""Mass-covering fine-tuning on Renyi's alpha bound."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer.autoguide import AutoNormal

from pyroflows.infer import fit, fit_mass_covering


@pytest.fixture(autouse=True)
def clean_param_store():
    pyro.clear_param_store()
    yield
    pyro.clear_param_store()


def correlated():
    # x, y standard normal with correlation 0.9: a KL(q||p) mean-field guide gets sd sqrt(1 - 0.81) = 0.44
    x = pyro.sample("x", dist.Normal(0.0, 1.0))
    pyro.sample("y", dist.Normal(0.9 * x, 0.19**0.5))


def test_fine_tuning_widens_a_mode_seeking_guide_towards_the_marginals():
    guide = AutoNormal(correlated)
    fit(correlated, guide, num_steps=800, lr=0.05, progress=False, seed=0, stop=None)
    before = guide.scales.x.item()
    assert before == pytest.approx(0.19**0.5, abs=0.05)
    fit_mass_covering(correlated, guide, num_steps=800, lr=0.02, progress=False, seed=0)
    after = guide.scales.x.item()  # alpha = 0.5: between the mode-seeking 0.44 and the marginal 1 (0.66 measured)
    assert before + 0.15 < after < 0.9
    assert abs(guide.locs.x.item()) < 0.1


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"alpha": 1.0}, ValueError, "alpha must be"),
        ({"alpha": -0.5}, ValueError, "alpha must be"),
        ({"num_particles": 1}, ValueError, "num_particles"),
        ({"loss": None}, TypeError, "sets the loss"),
    ],
)
def test_bad_options_raise(options, error, message):
    with pytest.raises(error, match=message):
        fit_mass_covering(correlated, AutoNormal(correlated), progress=False, **options)


def subsampled(data):
    mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
    with pyro.plate("rows", len(data), subsample_size=10) as idx:
        pyro.sample("y", dist.Normal(mu, 1.0), obs=data[idx])


def test_a_subsampled_model_is_refused():
    data = torch.randn(100)
    guide = AutoNormal(subsampled)
    fit(subsampled, guide, data, num_steps=20, progress=False, seed=0, stop=None)
    with pytest.raises(ValueError, match="plate 'rows' subsamples 10 of its 100 members"):
        fit_mass_covering(subsampled, guide, data, num_steps=5, progress=False)
