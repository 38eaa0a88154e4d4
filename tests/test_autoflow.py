import io

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.distributions import constraints
from pyro.infer import Predictive
from pyro.infer.autoguide import AutoIAFNormal

from pyroflows.diagnostics import draw
from pyroflows.infer import AutoFlow, fit
from pyroflows.transforms import LULinear


@pytest.fixture(autouse=True)
def clean_param_store():
    pyro.clear_param_store()
    yield
    pyro.clear_param_store()


def badly_scaled_regression(x, y=None):
    """Conjugate-like regression: coefficients of size ~1000 and ~0.01, correlated."""
    beta = pyro.sample("beta", dist.ImproperUniform(constraints.real_vector, (), (2,)))
    with pyro.plate("data", len(x)):
        pyro.sample("y", dist.Normal(beta[..., 0] + beta[..., 1] * x, 1.0), obs=y)


def exact_posterior(x, y):
    design = torch.stack([torch.ones_like(x), x], -1).double()
    cov = torch.linalg.inv(design.T @ design)
    return cov @ design.T @ y.double(), cov


def regression_data():
    gen = torch.Generator().manual_seed(0)
    x = 100 + 300 * torch.rand(200, generator=gen)  # not centred: strong correlation
    y = 1000.0 + 0.01 * x + torch.randn(200, generator=gen)
    return x, y


def test_improper_prior_and_bad_scaling_recovered():
    x, y = regression_data()
    mean, cov = exact_posterior(x, y)
    guide = AutoFlow(badly_scaled_regression)
    fit(badly_scaled_regression, guide, x, y, num_steps=200, progress=False, seed=0)
    # Pyro's Predictive samples the prior to guess plate nesting; draw() does not.
    draws = draw(badly_scaled_regression, guide, x, y, num_samples=4000).samples["beta"]
    sd = cov.diagonal().sqrt()
    assert ((draws.double().mean(0) - mean).abs() / sd).max() < 0.1
    assert ((draws.double().std(0) / sd).log().abs()).max() < 0.1
    corr = torch.corrcoef(draws.T.double())[0, 1]
    assert abs(corr - cov[0, 1] / sd.prod()) < 0.05


def test_pyro_flow_guides_crash_on_improper_priors_where_autoflow_does_not():
    x, y = regression_data()
    with pytest.raises(Exception):  # noqa: B017 - documents Pyro's behaviour the issue cites
        AutoIAFNormal(badly_scaled_regression)(x, y)
    assert AutoFlow(badly_scaled_regression)(x, y)["beta"].shape == (2,)


def model_with_constraints():
    pyro.sample("scale", dist.LogNormal(0.0, 0.5))
    pyro.sample("p", dist.Beta(2.0, 5.0))
    pyro.sample("w", dist.Dirichlet(torch.ones(3)))


@pytest.mark.parametrize("flow", ["nsf", "iaf", "realnvp", "nice", "resflow", "ffjord"])
def test_presets_sample_constrained_sites(flow):
    guide = AutoFlow(model_with_constraints, flow=flow)
    sample = guide()
    assert sample["scale"] > 0 and 0 < sample["p"] < 1
    assert torch.allclose(sample["w"].sum(), torch.tensor(1.0))


def test_callable_flow():
    guide = AutoFlow(model_with_constraints, flow=lambda d: LULinear(d))
    fit(model_with_constraints, guide, num_steps=5, progress=False)
    assert isinstance(guide.flow, LULinear) and guide.flow.event_shape == (4,)


def test_one_dimensional_latent_fits_a_skewed_posterior():
    def one_d():
        pyro.sample("x", dist.Gamma(3.0, 2.0))

    guide = AutoFlow(one_d)
    fit(one_d, guide, num_steps=500, progress=False, seed=0, lr=0.01)
    exact = dist.Gamma(3.0, 2.0).sample((200000,)).quantile(torch.tensor([0.1, 0.5, 0.9]))
    torch.testing.assert_close(guide.quantiles([0.1, 0.5, 0.9], num_samples=20000)["x"], exact, atol=0.05, rtol=0.03)


def test_median_and_quantiles_are_ordered_and_constrained():
    guide = AutoFlow(model_with_constraints)
    fit(model_with_constraints, guide, num_steps=50, progress=False, seed=0, stop=None)
    q = guide.quantiles([0.05, 0.5, 0.95])
    assert q["scale"].shape == (3,) and (q["scale"] > 0).all()
    assert (q["p"][0] < q["p"][1]) and (q["p"][1] < q["p"][2])
    assert set(guide.median()) == {"scale", "p", "w"}
    samples = guide.sample_posterior(500)
    assert samples["w"].shape == (500, 3) and (samples["scale"] > 0).all()
    torch.testing.assert_close(samples["w"].sum(-1), torch.ones(500))
    predicted = Predictive(model_with_constraints, guide=guide, num_samples=7)()
    assert predicted["w"].shape == (7, 3)
    with pytest.raises(ValueError, match="quantiles"):
        guide.quantiles([1.5])


def test_round_trips_through_torch_save_and_param_store(tmp_path):
    x, y = regression_data()
    guide = AutoFlow(badly_scaled_regression)
    fit(badly_scaled_regression, guide, x, y, num_steps=30, progress=False, seed=0)
    pyro.set_rng_seed(1)
    expected = guide(x, y)["beta"]

    buffer = io.BytesIO()
    torch.save(guide, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    pyro.set_rng_seed(1)
    torch.testing.assert_close(loaded(x, y)["beta"], expected)

    pyro.get_param_store().save(tmp_path / "params.pt")
    pyro.clear_param_store()
    pyro.get_param_store().load(tmp_path / "params.pt")
    fresh = AutoFlow(badly_scaled_regression)
    fresh(x, y)  # set up, then take the stored parameters
    pyro.set_rng_seed(1)
    torch.testing.assert_close(fresh(x, y)["beta"], expected)


def _guide_log_q(guide, *args):
    pyro.set_rng_seed(3)
    return poutine.trace(guide).get_trace(*args).log_prob_sum()


def wide_regression(x, y):
    w = pyro.sample("w", dist.Normal(torch.zeros(x.shape[-1]), 1.0).to_event(1))
    sigma = pyro.sample("sigma", dist.HalfNormal(1.0))
    with pyro.plate("rows", len(y)):
        pyro.sample("y", dist.Normal((x * w.unsqueeze(-2)).sum(-1), sigma), obs=y)


def test_a_param_store_reload_restores_the_resflow_spectral_norm_state(tmp_path):
    torch.manual_seed(0)
    x = torch.randn(100, 12)
    y = x @ torch.randn(12) + torch.randn(100)
    guide = AutoFlow(wide_regression, flow="resflow")
    fit(wide_regression, guide, x, y, num_steps=30, progress=False, seed=0, stop=None)
    pyro.get_param_store().save(tmp_path / "params.pt")  # weights averaged after the last forward: not in sync
    expected = _guide_log_q(guide, x, y)
    pyro.get_param_store().save(tmp_path / "synced.pt")  # the vectors now belong to the weights
    for saved in ("params.pt", "synced.pt"):
        pyro.clear_param_store()
        pyro.get_param_store().load(tmp_path / saved)
        fresh = AutoFlow(wide_regression, flow="resflow")
        fresh(x, y)  # set up (this draw moves Pyro's RNG, not the flow)
        assert torch.equal(_guide_log_q(fresh, x, y), expected), saved


def test_clear_errors():
    def discrete():
        pyro.sample("k", dist.Bernoulli(0.3))

    def no_latents():
        pyro.sample("y", dist.Normal(0.0, 1.0), obs=torch.tensor(0.5))

    with pytest.raises(TypeError, match="discrete.*enumerat"):
        AutoFlow(discrete)()
    with pytest.raises(ValueError, match="no latent"):
        AutoFlow(no_latents)()
    with pytest.raises(ValueError, match="flow must be one of"):
        AutoFlow(no_latents, flow="glow")
    with pytest.raises(ValueError, match="warm_start"):
        AutoFlow(no_latents, warm_start="map")


def test_resflow_preset_fits_a_banana():
    def banana():
        x = pyro.sample("x", dist.Normal(0.0, 1.0))
        pyro.sample("y", dist.Normal(x**2, 0.5))

    guide = AutoFlow(banana, flow="resflow", warm_start="laplace", num_transforms=2, hidden_dims=(32, 32))
    guide()
    before = draw(banana, guide, num_samples=2000).samples["y"].mean()
    losses = fit(banana, guide, num_steps=300, lr=0.01, progress=False, seed=0, stop=None)
    after = draw(banana, guide, num_samples=2000).samples["y"].mean()
    assert losses[-50:].mean() < losses[:50].mean() - 0.5
    assert after > before + 0.1  # moving from the Laplace fit at the mode towards E[y] = E[x^2] = 1


def test_warm_start_prefers_a_reliable_laplace_unless_another_start_sits_in_a_better_mode():
    from pyroflows.infer.latent import LatentSpace
    from pyroflows.infer.warm_start import Candidate, _choose

    def normal():
        pyro.sample("x", dist.Normal(0.0, 1.0))

    space, eye = LatentSpace(normal), torch.eye(1)

    def laplace(at, elbo, problem=None):
        return Candidate("Laplace from the prior mean", torch.tensor([at]), eye, elbo, problem)

    mean_field = Candidate("mean-field fit", torch.tensor([0.5]), eye, elbo=-1.0)
    # a better ELBO as a Gaussian is not enough: the Laplace approximation keeps the correlations
    assert _choose(space, [laplace(0.0, -5.0), mean_field], (), {}).name.startswith("Laplace")
    # a mean-field fit in a better mode than the MAP found, or an unreliable Laplace, lets it win
    assert _choose(space, [laplace(2.0, -5.0), mean_field], (), {}) is mean_field
    assert _choose(space, [laplace(0.0, -5.0, "its covariance is not finite"), mean_field], (), {}) is mean_field
