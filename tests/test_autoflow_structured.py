"""AutoFlow's structured (plate-aware) form on hierarchical models."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine

from pyroflows.diagnostics import draw, psis_diagnostic
from pyroflows.infer import AutoFlow, LatentSpace, fit, laplace
from pyroflows.posteriors import hierarchical as h


@pytest.fixture(autouse=True)
def clean_param_store():
    pyro.clear_param_store()
    yield
    pyro.clear_param_store()


def data_args(num_groups, rows=10, dtype=torch.float32):
    d = h.simulate(num_groups, rows, dtype=dtype)
    return (d["x"], d["group"], num_groups, d["y"])


def num_params(guide):
    return sum(p.numel() for p in guide.parameters())


def test_hierarchical_model_gets_the_structured_form_with_parameters_linear_in_groups():
    sizes = {}
    for groups in (20, 40, 80):
        pyro.clear_param_store()
        guide = AutoFlow(h.regression, warm_start=None)
        guide(*data_args(groups))
        assert guide.layout.plate.name == "groups" and guide.layout.local_dim == 2
        sizes[groups] = num_params(guide)
    per_member = 2 * 2 + 8  # loc and log-scale per local, and the embedding
    assert sizes[40] - sizes[20] == 20 * per_member
    assert sizes[80] - sizes[40] == 40 * per_member


def test_centred_hierarchical_model_fits_where_the_laplace_start_is_degenerate():
    args = data_args(12)
    guide = AutoFlow(h.regression)
    losses = fit(h.regression, guide, *args, num_steps=600, progress=False, seed=0)
    assert losses[-100:].mean() < losses[:50].mean()
    draws = draw(h.regression, guide, *args, num_samples=2000).samples
    assert (draws["sigma_a"] > 0).all() and draws["a"].shape == (2000, 12)
    # a usable guide (finite-mean weights); on 12 groups after 600 steps k-hat scatters 0.3-0.8 between
    # estimates, so accuracy is measured in benchmarks/hierarchical.py, not here
    assert psis_diagnostic(h.regression, guide, *args, num_samples=2000).khat < 1.0


def test_structured_guide_is_exact_for_the_conditional_of_the_locals():
    # q(a_j, b_j | globals) must follow the exact Gaussian conditional of the posterior
    d = h.simulate(8, 10, dtype=torch.float64)
    args = (d["x"], d["group"], 8, d["y"])
    guide = AutoFlow(h.regression)
    fit(h.regression, guide, *args, num_steps=1500, progress=False, seed=0, stop=None)
    samples = guide.sample_posterior(4000)
    stats = h.group_statistics(d["x_grouped"], d["y_grouped"])
    mu = torch.stack([samples["mu_a"], samples["mu_b"]], -1)
    scales = torch.stack([samples["sigma_a"], samples["sigma_b"]], -1)
    mean, cov = h.group_posterior(mu, scales, samples["sigma"], stats)
    effects = torch.stack([samples["a"], samples["b"]], -1)
    whitened = torch.linalg.solve_triangular(torch.linalg.cholesky(cov), (effects - mean).unsqueeze(-1), upper=False)
    whitened = whitened.squeeze(-1).reshape(-1, 2)
    assert whitened.mean(0).abs().max() < 0.1
    assert (whitened.std(0).log().abs() < 0.1).all()


def coupled(num):
    with pyro.plate("members", num):
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
    pyro.sample("total", dist.Normal(z.sum(-1), 0.5), obs=torch.tensor(1.0))


def nested(num):
    loc = pyro.sample("loc", dist.Normal(0.0, 1.0))
    with pyro.plate("outer", num, dim=-2), pyro.plate("inner", 3, dim=-1):
        pyro.sample("z", dist.Normal(loc, 1.0))


@pytest.mark.parametrize(("model", "reason"), [(coupled, "couples members"), (nested, "nested plates")])
def test_models_the_factorisation_does_not_hold_for_fall_back_to_the_joint_flow(model, reason):
    guide = AutoFlow(model, warm_start=None)
    with pytest.warns(UserWarning, match=reason):
        guide(5)
    assert guide.layout.plate is None
    with pytest.raises(ValueError, match=reason):
        AutoFlow(model, structure="plates", warm_start=None)(5)


def test_subsampled_groups_cost_only_their_members():
    d = h.simulate(200, 5)
    guide = AutoFlow(h.grouped_regression)
    fit(h.grouped_regression, guide, d["x_grouped"], d["y_grouped"], 20, num_steps=30, progress=False, seed=0)
    trace = pyro.poutine.trace(guide).get_trace(d["x_grouped"], d["y_grouped"], 20)
    assert trace.nodes["a_raw"]["value"].shape == (20, 1)
    assert trace.nodes["_AutoFlow_locals"]["scale"] == pytest.approx(10.0)
    samples = guide.sample_posterior(50)
    assert samples["a_raw"].shape == (50, 200, 1)
    with pytest.raises(ValueError, match="structured"):
        AutoFlow(h.grouped_regression, structure="joint")(d["x_grouped"], d["y_grouped"], 20)


LAYOUTS = {
    "long": (h.regression, lambda d: (d["x"], d["group"], 30, d["y"])),
    "grouped": (h.grouped_regression, lambda d: (d["x_grouped"], d["y_grouped"], None, True)),
    "subsampled": (h.grouped_regression, lambda d: (d["x_grouped"], d["y_grouped"], 12, True)),
}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_laplace_conditional_is_the_exact_conditional_of_the_locals_before_any_training(layout):
    # Gaussian effects, Gaussian likelihood: one Newton step gives q(locals | globals) = p(locals | globals, y)
    model, make_args = LAYOUTS[layout]
    d = h.simulate(30, 10, dtype=torch.float64)
    args = make_args(d)
    guide = AutoFlow(model, warm_start=None)
    guide(*args)
    eps = torch.randn(5, guide.latent_dim, dtype=torch.float64)
    values = guide.constrained_values(guide.base_to_latent(eps)[0])
    mu = torch.stack([values["mu_a"], values["mu_b"]], -1).reshape(5, 2)
    scales = torch.stack([values["sigma_a"], values["sigma_b"]], -1).reshape(5, 2)
    mean, cov = h.group_posterior(
        mu, scales, values["sigma"].reshape(5), h.group_statistics(d["x_grouped"], d["y_grouped"])
    )
    effects = torch.stack([values["a"].reshape(5, 30), values["b"].reshape(5, 30)], -1)
    whitened = torch.linalg.solve_triangular(torch.linalg.cholesky(cov), (effects - mean).unsqueeze(-1), upper=False)
    _, eps_local = guide.layout.split(eps)
    # the map from eps_i to the whitened effects is a rotation: norms agree member by member
    assert torch.allclose(whitened.squeeze(-1).norm(dim=-1), eps_local.reshape(5, 30, 2).norm(dim=-1), atol=1e-6)


def test_sampling_site_the_guide_does_not_see_falls_back_to_the_learned_conditional():
    def model(num):
        loc = pyro.sample("loc", dist.Normal(0.0, 1.0))
        noise = poutine.block(lambda: pyro.sample("noise", dist.Normal(0.0, 1.0)))()
        pyro.sample("obs", dist.Normal(loc + noise, 1.0), obs=torch.tensor(0.5))
        with pyro.plate("members", num):
            pyro.sample("z", dist.Normal(loc, 1.0))

    guide = AutoFlow(model, warm_start=None)
    with pytest.warns(UserWarning, match="still draws random numbers"):
        guide(6)
    assert guide.layout.plate is not None and guide.sample_posterior(4)["z"].shape == (4, 6)


def test_conditional_must_be_named():
    with pytest.raises(ValueError, match="conditional must be one of"):
        AutoFlow(h.regression, conditional="newton")


def test_warm_start_puts_the_globals_at_the_laplace_approximation_of_their_exact_marginal():
    # Gaussian effects: the Newton steps integrate the locals out exactly, so the globals' start is the
    # Laplace approximation of the collapsed (locals integrated out in closed form) model
    d = h.simulate(30, 10, dtype=torch.float64)
    guide = AutoFlow(h.regression)
    guide(d["x"], d["group"], 30, d["y"])
    stats = h.group_statistics(d["x_grouped"], d["y_grouped"])
    loc, scale_tril = laplace(LatentSpace(h.collapsed_regression, stats), stats)
    assert torch.allclose(guide.preconditioner_loc, loc, atol=1e-4)
    cov = guide.preconditioner_scale_tril @ guide.preconditioner_scale_tril.T
    assert torch.allclose(cov, scale_tril @ scale_tril.T, rtol=1e-3, atol=1e-6)


def poisson_effects(group, y):
    mu = pyro.sample("mu", dist.Normal(0.0, 2.0))
    tau = pyro.sample("tau", dist.HalfNormal(1.0))
    with pyro.plate("groups", 20):
        a = pyro.sample("a", dist.Normal(mu, tau))
    with pyro.plate("rows", len(y)):
        pyro.sample("y", dist.Poisson(a[..., group].exp()), obs=y)


def _member_head_gradients(guide, model, *args):
    pyro.infer.Trace_ELBO().differentiable_loss(model, guide, *args).backward()
    return [p.grad for p in guide.members.head.parameters()]


def test_member_networks_are_skipped_only_where_the_newton_gaussian_is_exact():
    # Gaussian effects with a Gaussian likelihood: the Newton step is the exact conditional, nothing to correct
    args = data_args(30)
    gaussian = AutoFlow(h.regression)
    gaussian(*args)
    assert gaussian._exact_locals and "exact Gaussian locals" in repr(gaussian)
    assert all(grad is None for grad in _member_head_gradients(gaussian, h.regression, *args))
    # Poisson counts: the Laplace step is only an approximation, which the member flow corrects
    pyro.clear_param_store()  # two guides of one name share the store
    group = torch.arange(20).repeat_interleave(5)
    y = torch.poisson(torch.exp(0.5 + 0.3 * torch.randn(20))[group])
    poisson = AutoFlow(poisson_effects)
    poisson(group, y)
    assert not poisson._exact_locals
    assert all(grad is not None for grad in _member_head_gradients(poisson, poisson_effects, group, y))


def rows_in_their_own_plate(x, y, rows_of, batch):
    """Gaussian effects of a subsampled group plate; each group's rows in a plate of their own."""
    mu = pyro.sample("mu", dist.Normal(0.0, 2.0))
    tau = pyro.sample("tau", dist.HalfNormal(1.0))
    with pyro.plate("groups", len(rows_of), subsample_size=batch) as index:
        a = pyro.sample("a", dist.Normal(mu, tau))
    rows = rows_of[index].reshape(-1)
    with pyro.plate("rows", len(rows)):
        member = torch.arange(len(index)).repeat_interleave(rows_of.shape[1])
        pyro.sample("y", dist.Normal(a[..., member] + 0.5 * x[rows], 0.3), obs=y[rows])


def test_warm_start_of_a_subsampled_plate_counts_the_rows_of_every_chunk():
    # the globals' start integrates every group out, chunk by chunk; the rows sit outside the group plate,
    # so a chunk that counted only the plate's own sites would leave their likelihood out
    gen = torch.Generator().manual_seed(0)
    rows_of = torch.arange(40 * 5).reshape(40, 5)
    x = torch.randn(200, generator=gen, dtype=torch.float64)
    y = torch.randn(40, generator=gen, dtype=torch.float64).repeat_interleave(5) + 0.5 * x
    starts = []
    for batch in (40, 10):  # all groups in one chunk, then four chunks
        pyro.clear_param_store()
        guide = AutoFlow(rows_in_their_own_plate)
        guide(x, y, rows_of, batch)
        starts.append(guide.preconditioner_loc.detach())
    assert torch.allclose(starts[0], starts[1], atol=1e-3)  # 0.15 apart when the rows were left out
