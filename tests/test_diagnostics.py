import arviz as az
import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer.autoguide import AutoNormal

from pyroflows.diagnostics import (
    compare,
    draw,
    energy_distance,
    importance_resample,
    nuts,
    pair_plot,
    psis,
    psis_diagnostic,
    to_inference_data,
)
from pyroflows.diagnostics.arviz import posterior_draws


@pytest.fixture(autouse=True)
def clean_param_store():
    pyro.clear_param_store()


def model(data):
    loc = pyro.sample("loc", dist.Normal(0.0, 10.0))
    scale = pyro.sample("scale", dist.LogNormal(0.0, 1.0))
    pyro.deterministic("loc_squared", loc**2)
    with pyro.plate("data", len(data)):
        pyro.sample("obs", dist.Normal(loc, scale), obs=data)


def guide_at(loc, scale):
    def guide(data):
        pyro.sample("loc", dist.Normal(loc, scale))
        pyro.sample("scale", dist.LogNormal(0.0, 0.1))

    return guide


def test_draw_shapes_and_log_weights_match_manual():
    data = torch.randn(10)
    d = draw(model, guide_at(0.0, 1.0), data, num_samples=7, batch_size=3)
    assert d.samples["loc"].shape == (7,) and d.samples["loc_squared"].shape == (7,)
    assert "obs" not in d.samples
    i = 4
    loc, scale = d.samples["loc"][i], d.samples["scale"][i]
    log_p = dist.Normal(0.0, 10.0).log_prob(loc) + dist.LogNormal(0.0, 1.0).log_prob(scale)
    log_p = log_p + dist.Normal(loc, scale).log_prob(data).sum()
    log_q = dist.Normal(0.0, 1.0).log_prob(loc) + dist.LogNormal(0.0, 0.1).log_prob(scale)
    torch.testing.assert_close(d.log_p[i], log_p)
    torch.testing.assert_close(d.log_q[i], log_q)


def test_psis_separates_exact_from_poor_guides():
    rng = np.random.default_rng(0)
    exact = psis(np.zeros(2000) + rng.normal(0, 0.01, 2000))
    assert exact.khat < 0.3 and exact.ess > 1900 and exact.reliable
    heavy = psis(rng.standard_cauchy(2000) * 5)
    assert heavy.khat > 0.7 and not heavy.reliable
    with pytest.raises(ValueError, match="not finite"):
        psis(np.array([0.0, np.nan, 1.0]))
    with pytest.raises(ValueError, match="1-D"):
        psis(np.zeros((3, 3)))


def test_psis_diagnostic_of_a_too_narrow_guide_is_high():
    data = torch.randn(100) * 2 + 1
    narrow = psis_diagnostic(model, guide_at(1.0, 0.001), data, num_samples=1000)
    assert narrow.khat > 0.7


def test_importance_resampling_corrects_a_shifted_guide():
    def target():
        pyro.sample("x", dist.Normal(1.0, 1.0))

    def shifted():
        pyro.sample("x", dist.Normal(0.5, 1.5))

    d = draw(target, shifted, num_samples=20000)
    resampled = importance_resample(d, 20000, generator=torch.Generator().manual_seed(0))
    assert abs(d.samples["x"].mean() - 1.0) > 0.4
    assert abs(resampled["x"].mean() - 1.0) < 0.05


def test_inference_data_works_with_arviz():
    data = torch.randn(30)
    guide = AutoNormal(model)
    guide(data)
    idata = to_inference_data(model, guide, data, num_samples=200)
    assert set(idata.posterior.data_vars) == {"loc", "scale", "loc_squared"}
    assert {"lp", "log_q", "log_weight", "smoothed_log_weight"} <= set(idata.sample_stats.data_vars)
    assert 0 <= idata.attrs["ess"] <= 200 and np.isfinite(idata.attrs["khat"])
    summary = az.summary(idata, var_names=["loc", "scale"], kind="stats")
    assert list(summary.index) == ["loc", "scale"]
    az.plot_posterior(idata, var_names=["loc"])


def test_inference_data_has_pointwise_log_likelihood_for_loo():
    data = torch.randn(30)
    guide = AutoNormal(model)
    guide(data)
    idata = to_inference_data(model, guide, data, num_samples=300)
    log_lik = idata.log_likelihood["obs"].values
    assert log_lik.shape == (1, 300, 30)
    np.testing.assert_allclose(idata.observed_data["obs"].values, data.numpy())
    loc, scale = idata.posterior["loc"].values[0, 5], idata.posterior["scale"].values[0, 5]
    manual = dist.Normal(float(loc), float(scale)).log_prob(data).numpy()
    np.testing.assert_allclose(log_lik[0, 5], manual, rtol=1e-5)
    loo = az.loo(idata)
    assert np.isfinite(loo.elpd_loo) and loo.n_data_points == 30


def test_inference_data_log_likelihood_with_the_structured_flow_guide():
    from pyroflows.infer import AutoFlow

    groups = torch.arange(6).repeat_interleave(4)
    y = torch.randn(24)

    def grouped(y):
        mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        with pyro.plate("groups", 6):
            a = pyro.sample("a", dist.Normal(mu, 1.0))
        with pyro.plate("rows", 24):
            pyro.sample("y", dist.Normal(a[..., groups], 1.0), obs=y)

    guide = AutoFlow(grouped, warm_start=None)
    guide(y)
    idata = to_inference_data(grouped, guide, y, num_samples=200)
    assert idata.posterior["a"].shape == (1, 200, 6)
    assert idata.log_likelihood["y"].shape == (1, 200, 24)
    assert np.isfinite(az.waic(idata).elpd_waic)


def test_compare_and_energy_distance():
    rng = np.random.default_rng(0)
    ref = {"a": rng.normal(size=5000), "b": rng.normal(size=5000)}
    same = compare({"a": rng.normal(size=5000), "b": rng.normal(size=5000)}, ref)
    off = compare({"a": rng.normal(0.5, 2.0, size=5000), "b": rng.normal(size=5000)}, ref)
    assert same.passes() and not off.passes()
    assert off.max_mean_error == pytest.approx(0.5, abs=0.08)
    assert off.max_log_sd_ratio == pytest.approx(np.log(2.0), abs=0.05)
    assert off.energy > 10 * max(same.energy, 1e-3)
    assert "a" in off.table()
    x = rng.normal(size=(500, 2))
    assert energy_distance(x, x) == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match="lack parameters"):
        compare({"a": ref["a"]}, ref)


def test_nuts_side_by_side_and_pair_plot(tmp_path):
    data = torch.randn(20) + 3
    idata, seconds = nuts(model, data, num_samples=150, warmup_steps=100)
    assert seconds > 0 and set(idata.posterior.data_vars) >= {"loc", "scale", "loc_squared"}
    draws = posterior_draws(idata)
    assert abs(draws["loc"].mean() - data.mean().item()) < 0.5
    np.testing.assert_allclose(draws["loc_squared"], draws["loc"] ** 2, rtol=1e-5)
    pair_plot({"nuts": draws}, ["loc", "scale"], str(tmp_path / "pair.png"))
    assert (tmp_path / "pair.png").stat().st_size > 1000
