"""Everyday Pyro calls on AutoFlow: each of these failed before the structured guide landed."""

import io

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import SVI, Predictive, Trace_ELBO, TraceGraph_ELBO, TraceMeanField_ELBO
from pyro.infer.autoguide import AutoDelta, AutoGuideList

from pyroflows.infer import AutoFlow, FlowPrior, fit
from pyroflows.posteriors import hierarchical as h


@pytest.fixture(autouse=True)
def clean_param_store():
    pyro.clear_param_store()
    yield
    pyro.clear_param_store()


@pytest.fixture
def hierarchical():
    d = h.simulate(10, 5)
    return h.regression, (d["x"], d["group"], 10, d["y"])


@pytest.mark.parametrize("structure", ["plates", "joint"])
def test_sample_posterior_of_plated_latents_has_full_shapes(hierarchical, structure):
    model, args = hierarchical
    guide = AutoFlow(model, structure=structure, warm_start=None)
    guide(*args)
    for n in (1, 7):
        samples = guide.sample_posterior(n)
        assert samples["a"].shape == (n, 10) and samples["mu_a"].shape == (n,)
    assert guide.median()["a"].shape == (10,)
    assert guide.quantiles([0.1, 0.9])["sigma"].shape == (2,)


def repeated_measures(y):
    """Group effects observed through a nested plate of repeats (an observation-only plate at dim -2)."""
    mu = pyro.sample("mu", dist.Normal(0.0, 5.0))
    sd = pyro.sample("sd", dist.HalfNormal(2.0))
    with pyro.plate("groups", y.shape[-1]):
        effect = pyro.sample("effect", dist.Normal(mu, sd))
        with pyro.plate("repeats", y.shape[-2], dim=-2):
            pyro.sample("y", dist.Normal(effect, 0.3), obs=y)


@pytest.mark.parametrize("structure", ["plates", "joint"])
def test_sample_posterior_with_an_observation_only_nested_plate(structure):
    # Pyro's prototype trace hides observed sites, so their plate's dim was missed: the draws took dim -2
    y = torch.randn(5, 12)
    guide = AutoFlow(repeated_measures, structure=structure, warm_start=None)
    guide(y)
    assert guide.sample_posterior(64, y)["effect"].shape == (64, 12)
    assert guide.median(y)["effect"].shape == (12,) and guide.quantiles([0.5], y)["sd"].shape == (1,)


@pytest.mark.parametrize("mode", ["no_grad", "inference_mode"])
def test_predictive_before_training_under_no_grad(hierarchical, mode):
    model, args = hierarchical
    context = torch.no_grad() if mode == "no_grad" else torch.inference_mode()
    with context:
        predicted = Predictive(model, guide=AutoFlow(model), num_samples=3)(*args[:3])
    assert predicted["y"].shape == (3, 50)


def test_explicit_max_plate_nesting(hierarchical):
    model, args = hierarchical
    guide = AutoFlow(model)
    elbo = Trace_ELBO(num_particles=4, vectorize_particles=True, max_plate_nesting=1)
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.01}), elbo)
    assert torch.isfinite(torch.tensor(svi.step(*args)))


@pytest.mark.parametrize("elbo", [TraceMeanField_ELBO, TraceGraph_ELBO])
def test_other_elbos(hierarchical, elbo):
    model, args = hierarchical
    losses = fit(model, AutoFlow(model), *args, num_steps=5, loss=elbo(), progress=False, stop=None)
    assert len(losses) == 5


def test_autoguide_list_and_block(hierarchical):
    model, args = hierarchical
    guide = AutoGuideList(model)
    guide.append(AutoDelta(poutine.block(model, expose=["sigma"])))
    guide.append(AutoFlow(poutine.block(model, hide=["sigma"])))
    fit(model, guide, *args, num_steps=5, progress=False, stop=None)
    assert set(guide(*args)) >= {"sigma", "mu_a", "a"}


def test_float64_end_to_end():
    d = h.simulate(6, 5, dtype=torch.float64)
    args = (d["x"], d["group"], 6, d["y"])
    guide = AutoFlow(h.regression)
    fit(h.regression, guide, *args, num_steps=5, progress=False, stop=None)
    assert guide.sample_posterior(3)["a"].dtype == torch.float64


def test_state_dict_loaded_before_the_first_call_skips_the_warm_start(hierarchical, tmp_path):
    model, args = hierarchical
    guide = AutoFlow(model)
    fit(model, guide, *args, num_steps=20, progress=False, seed=0)
    torch.save(guide.state_dict(), tmp_path / "guide.pt")
    pyro.set_rng_seed(3)
    expected = guide.sample_posterior(5)["a"]
    pyro.clear_param_store()

    fresh = AutoFlow(model)
    fresh.load_state_dict(torch.load(tmp_path / "guide.pt"))  # default weights_only
    fresh(*args)
    assert all(torch.equal(value, fresh.state_dict()[name]) for name, value in guide.state_dict().items())
    pyro.set_rng_seed(3)
    torch.testing.assert_close(fresh.sample_posterior(5)["a"], expected)


def test_param_store_reload_does_not_refit(hierarchical, tmp_path, monkeypatch):
    model, args = hierarchical
    guide = AutoFlow(model)
    fit(model, guide, *args, num_steps=20, progress=False, seed=0)
    pyro.get_param_store().save(tmp_path / "params.pt")
    pyro.set_rng_seed(3)
    expected = guide.sample_posterior(5)["a"]
    pyro.clear_param_store()
    pyro.get_param_store().load(tmp_path / "params.pt")

    import pyroflows.infer.autoguide as autoguide

    def no_warm_start(*_, **__):
        raise AssertionError("the warm start ran again")

    monkeypatch.setattr(autoguide, "mean_field_vector", no_warm_start)
    fresh = AutoFlow(model)
    fresh(*args)
    assert all(torch.equal(value, fresh.state_dict()[name]) for name, value in guide.state_dict().items())
    pyro.set_rng_seed(3)
    torch.testing.assert_close(fresh.sample_posterior(5)["a"], expected)


def test_whole_guide_round_trips_through_torch_save(hierarchical):
    model, args = hierarchical
    guide = AutoFlow(model)
    fit(model, guide, *args, num_steps=10, progress=False, seed=0, stop=None)
    buffer = io.BytesIO()
    torch.save(guide, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    pyro.set_rng_seed(2)
    expected = guide(*args)["a"]
    pyro.set_rng_seed(2)
    torch.testing.assert_close(loaded(*args)["a"], expected)


def test_model_with_a_flow_prior_warm_starts_without_double_backward():
    prior = FlowPrior(2, num_transforms=2, hidden_dims=(8,))

    def model():
        z = pyro.sample("z", prior())
        pyro.sample("y", dist.Normal(z.sum(-1), 1.0), obs=torch.tensor(0.5))

    guide = AutoFlow(model, warm_start="laplace")
    guide()
    assert torch.isfinite(guide.preconditioner_scale_tril).all()
    fit(model, guide, num_steps=5, progress=False)


def test_to_device_keeps_working(hierarchical):
    model, args = hierarchical
    guide = AutoFlow(model, warm_start=None)
    guide(*args)
    guide.to("cpu")
    assert guide.sample_posterior(2)["a"].device.type == "cpu"
