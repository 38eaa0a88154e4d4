import copy
import functools
import itertools

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch import nn

from pyroflows.datasets import toy_2d
from pyroflows.matching import (
    AffinePath,
    CondOT,
    Cosine,
    ExactOT,
    FlowMatcher,
    Independent,
    LabelAwareOT,
    SinkhornOT,
    VariancePreserving,
    distill,
    reflow,
    straightness,
    train_matcher,
    wasserstein2,
)
from pyroflows.nn.velocity import TimeMLP, UNet8
from pyroflows.training import NonFiniteLossError

COUPLINGS = {"independent": Independent, "ot": ExactOT}


class GaussianVelocity(nn.Module):
    """Exact marginal velocity of the linear path from N(0, I) to N(m, sd^2 I)."""

    def __init__(self, m, sd):
        super().__init__()
        self.m, self.sd = nn.Parameter(torch.as_tensor(m)), sd

    def forward(self, x, t, context=None):
        t = torch.as_tensor(t).to(x)
        t = t[..., None] if t.dim() else t
        var = t**2 * self.sd**2 + (1 - t) ** 2
        return (t * self.sd**2 - (1 - t)) / var * (x - t * self.m) + self.m


@pytest.mark.parametrize("scheduler", [CondOT(), CondOT(sigma_min=1e-2), Cosine(), VariancePreserving()])
def test_scheduler_derivatives_and_ends(scheduler):
    t = torch.linspace(0.01, 0.99, 7, dtype=torch.float64, requires_grad=True)
    alpha, sigma, d_alpha, d_sigma = scheduler(t)
    torch.testing.assert_close(torch.autograd.grad(alpha.sum(), t, retain_graph=True)[0], d_alpha)
    torch.testing.assert_close(torch.autograd.grad(sigma.sum(), t)[0], d_sigma)
    ends = torch.tensor([0.0, 1.0], dtype=torch.float64)
    alpha, sigma, _, _ = scheduler(ends)
    assert alpha[1] == pytest.approx(1.0) and sigma[1] == pytest.approx(getattr(scheduler, "sigma_min", 0.0), abs=1e-6)
    assert alpha[0] == pytest.approx(0.0, abs=1e-2) and sigma[0] == pytest.approx(1.0, abs=1e-4)


def test_path_target_is_the_time_derivative_of_the_sample():
    path = AffinePath(Cosine())
    x_0, x_1 = torch.randn(5, 3, dtype=torch.float64), torch.randn(5, 3, dtype=torch.float64)
    t = torch.rand(5, dtype=torch.float64)
    _, u = path.sample(x_0, x_1, t)
    jvp = torch.func.jvp(lambda s: path.sample(x_0, x_1, s)[0], (t,), (torch.ones_like(t),))[1]
    torch.testing.assert_close(jvp, u)


def test_exact_ot_is_the_optimal_permutation():
    torch.manual_seed(0)
    x_0, x_1 = torch.randn(6, 2), torch.randn(6, 2)
    a, b = ExactOT()(x_0, x_1)
    assert torch.equal(a, x_0) and sorted(b.tolist()) == sorted(x_1.tolist())
    best = min(sum((x_0[i] - x_1[j]).pow(2).sum() for i, j in enumerate(p)) for p in itertools.permutations(range(6)))
    assert (a - b).pow(2).sum().item() == pytest.approx(best.item(), rel=1e-6)
    a, b = Independent()(x_0, x_1)
    assert torch.equal(b, x_1)


def test_label_aware_ot_pairs_within_labels_only():
    torch.manual_seed(0)
    labels = torch.tensor([0, 1, 0, 1, 1, 0])
    x_0, x_1 = torch.randn(6, 2), torch.randn(6, 2) + 10 * labels[:, None]
    a, b = LabelAwareOT()(x_0, x_1, labels)
    assert torch.equal(b, x_1) and sorted(a.tolist()) == sorted(x_0.tolist())
    for label in (0, 1):
        idx = (labels == label).nonzero().squeeze(-1)
        # the noise assigned to this label is the noise that was drawn for it, optimally paired
        assert sorted(a[idx].tolist()) == sorted(x_0[idx].tolist())
        exact = ExactOT()(x_0[idx], x_1[idx])
        assert (a[idx] - b[idx]).pow(2).sum().item() == pytest.approx((exact[0] - exact[1]).pow(2).sum().item())
    with pytest.raises(ValueError, match="labels"):
        LabelAwareOT()(x_0, x_1)


def test_sinkhorn_is_close_to_exact_ot_on_a_large_batch():
    torch.manual_seed(0)
    x_0, x_1 = torch.randn(512, 2), toy_2d("moons", 512)
    exact = (lambda a, b: (a - b).pow(2).sum(-1).mean())(*ExactOT()(x_0, x_1))
    independent = (x_0 - x_1).pow(2).sum(-1).mean()
    a, b = SinkhornOT(reg=0.01, seed=0)(x_0, x_1)
    cost = (a - b).pow(2).sum(-1).mean()
    assert exact <= cost < exact + 0.2 * (independent - exact)


def test_ode_likelihood_matches_a_known_density_in_float64():
    m, sd = torch.tensor([1.0, -2.0], dtype=torch.float64), 0.5
    fm = FlowMatcher(GaussianVelocity(m, sd), (2,))
    truth = dist.Normal(m, sd).to_event(1)
    x = truth.sample((50,))
    tight = {"rtol": 1e-10, "atol": 1e-10}
    assert (fm.log_prob(x, **tight) - truth.log_prob(x)).abs().max() < 1e-4
    assert (fm.distribution(**tight).log_prob(x) - truth.log_prob(x)).abs().max() < 1e-4
    hutch = fm.log_prob(x, trace="hutchinson", **tight)  # unbiased, one probe: close on average
    assert (hutch - truth.log_prob(x)).mean().abs() < 0.1
    samples, log_prob = fm.sample_and_log_prob(200, **tight)
    assert (log_prob - truth.log_prob(samples)).abs().max() < 1e-4
    grad = torch.autograd.grad(fm.log_prob(x, **tight).sum(), fm.velocity.m)[0]
    torch.testing.assert_close(grad, ((x - m) / sd**2).sum(0), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("method,steps", [("euler", 500), ("midpoint", 20), ("rk4", 5), ("dopri5", None)])
def test_samplers_reach_the_target_and_count_evaluations(method, steps):
    m, sd = torch.tensor([1.0, -2.0], dtype=torch.float64), 0.5
    fm = FlowMatcher(GaussianVelocity(m, sd), (2,))
    x_0 = torch.randn(2000, 2, dtype=torch.float64)
    exact = m + sd * x_0  # the linear flow's end point for this field
    x_1 = fm.sample(x_0, steps=steps or 1, method=method, rtol=1e-8, atol=1e-8)
    assert (x_1 - exact).abs().max() < 1e-2
    per_step = {"euler": 1, "midpoint": 2, "rk4": 4}
    if method in per_step:
        assert fm.last_nfe == per_step[method] * steps
    else:
        assert fm.last_nfe > 6


@functools.cache
def fitted(coupling: str, steps: int = 600, data: str = "moons", seed: int = 0):
    torch.manual_seed(seed)
    fm = FlowMatcher(TimeMLP(2, hidden_dims=(64, 64)), (2,), coupling=COUPLINGS[coupling]())
    train_matcher(fm, toy_2d(data, 4000, seed=seed), steps, lr=3e-3, seed=seed, progress=False)
    return fm


def test_flow_matching_learns_moons_and_ot_straightens_paths():
    test = toy_2d("moons", 1000, seed=1)
    gaussian = dist.MultivariateNormal(test.mean(0), torch.cov(test.T)).sample((1000,))
    baseline = wasserstein2(gaussian, test)  # about 0.6; two data sets of this size: about 0.12
    for coupling in COUPLINGS:
        assert wasserstein2(fitted(coupling).sample(1000, steps=50), test) < 0.75 * baseline
    x_0 = torch.randn(1000, 2)
    assert straightness(fitted("ot"), x_0) < 0.5 * straightness(fitted("independent"), x_0)


def test_reflow_straightens_and_distillation_gives_a_one_step_sampler():
    torch.manual_seed(0)
    fm = copy.deepcopy(fitted("independent", steps=400))
    x_0 = torch.randn(1000, 2)
    before = straightness(fm, x_0)
    target = fm.sample(x_0, steps=100)
    reflow(fm, rounds=1, num_pairs=4000, steps=300, sample_steps=50, lr=1e-3, seed=0, progress=False)
    assert straightness(fm, x_0) < 0.5 * before
    one_step_before = (fm.sample(x_0, steps=1) - target).pow(2).sum(-1).mean()
    pairs = (x_0, fm.sample(x_0, steps=100))
    distill(fm, *pairs, steps=300, lr=1e-3, seed=0, progress=False)
    one_step_after = (fm.sample(x_0, steps=1) - pairs[1]).pow(2).sum(-1).mean()
    assert one_step_after < 0.5 * one_step_before


def test_class_conditional_model_with_guidance():
    torch.manual_seed(0)
    labels = torch.randint(2, (4000,))
    x_1 = torch.randn(4000, 2) * 0.3 + torch.tensor([[-2.0, 0.0], [2.0, 0.0]])[labels]
    onehot = nn.functional.one_hot(labels, 2).float()
    fm = FlowMatcher(
        TimeMLP(2, (64, 64), context_dim=3), (2,), coupling=LabelAwareOT(), context_dim=2, guidance_dropout=0.2
    )
    train_matcher(fm, x_1, 600, lr=3e-3, context=onehot, labels=labels, seed=0, progress=False)
    ctx = torch.tensor([[0.0, 1.0]]).expand(500, 2)
    x = fm.sample(500, steps=50, context=ctx)
    assert (x[:, 0] - 2.0).abs().mean() < 0.4
    guided = fm.sample(500, steps=50, context=ctx, guidance=2.0)
    assert guided[:, 0].mean() > 1.5
    unconditional = fm.sample(torch.randn(500, 2), steps=50, context=ctx, guidance=0.0)
    assert unconditional.shape == (500, 2)
    with pytest.raises(ValueError, match="context"):
        fm.sample(5, context=None)


def test_flow_matching_prior_runs_under_svi():
    torch.manual_seed(0)
    pyro.clear_param_store()
    fm = copy.deepcopy(fitted("ot"))
    for p in fm.parameters():
        p.requires_grad_(False)
    prior = fm.distribution(method="rk4", step_size=0.25)
    y = torch.tensor([0.5, 0.2])

    def model():
        z = pyro.sample("z", prior)
        pyro.sample("y", dist.Normal(z, 0.3).to_event(1), obs=y)

    def guide():
        loc = pyro.param("loc", torch.zeros(2))
        pyro.sample("z", dist.Normal(loc, 0.2).to_event(1))

    svi = pyro.infer.SVI(model, guide, pyro.optim.Adam({"lr": 0.05}), pyro.infer.Trace_ELBO())
    losses = [svi.step() for _ in range(60)]
    assert all(torch.isfinite(torch.tensor(losses)))
    assert sum(losses[-10:]) < sum(losses[:10])
    assert (pyro.param("loc") - y).norm() < 1.0
    assert prior.rsample((4,)).shape == (4, 2)


def test_unet_on_images_trains_and_samples():
    torch.manual_seed(0)
    images = torch.rand(64, 1, 8, 8)
    fm = FlowMatcher(UNet8(1, width=8), (1, 8, 8))
    losses = train_matcher(fm, images, 20, batch_size=16, lr=1e-3, seed=0, progress=False)
    assert losses[-1] < losses[0]
    assert fm.sample(3, steps=2).shape == (3, 1, 8, 8)
    log_prob = fm.log_prob(images[:2], method="rk4", step_size=0.5)
    assert log_prob.shape == (2,) and torch.isfinite(log_prob).all()


def test_bad_inputs():
    fm = FlowMatcher(TimeMLP(2, (8,)), (2,))
    with pytest.raises(ValueError, match=r"\(\*batch, 2\)"):
        fm.loss(torch.randn(4, 3))
    with pytest.raises(ValueError, match="NaN"):
        fm.loss(torch.tensor([[float("nan"), 0.0]]))
    with pytest.raises(ValueError, match="method"):
        fm.sample(3, method="heun")
    with pytest.raises(ValueError, match="steps"):
        fm.sample(3, steps=0)
    with pytest.raises(ValueError, match="no context"):
        fm.loss(torch.randn(4, 2), context=torch.randn(4, 1))
    with pytest.raises(ValueError, match="guidance"):
        fm.sample(3, guidance=1.0)
    with pytest.raises(ValueError, match="guidance_dropout"):
        FlowMatcher(TimeMLP(2, (8,)), (2,), guidance_dropout=0.1)
    with pytest.raises(TypeError, match="nn.Module"):
        FlowMatcher(lambda x, t, c: x, (2,))
    with pytest.raises(ValueError, match="sigma_min"):
        CondOT(sigma_min=1.0)
    with pytest.raises(ValueError, match="same shape"):
        ExactOT()(torch.randn(3, 2), torch.randn(4, 2))
    with pytest.raises(ValueError, match="rows"):
        train_matcher(fm, torch.randn(10, 2), 1, x_0=torch.randn(9, 2), progress=False)
    with pytest.raises(ValueError, match=r"t must be"):
        TimeMLP(2)(torch.randn(4, 2), torch.rand(3))
    with pytest.raises(ValueError, match="ema"):
        train_matcher(fm, torch.randn(10, 2), 1, ema=1.0, progress=False)


def test_training_ends_with_the_moving_average_of_the_weights():
    data = toy_2d("moons", 500)
    models = []
    for _ in range(2):  # the same initial weights
        torch.manual_seed(0)
        models.append(FlowMatcher(TimeMLP(2, (16,)), (2,)))
    plain, averaged = models
    expected = [p.detach().clone() for p in plain.parameters()]
    opt = torch.optim.Adam(plain.parameters(), lr=1e-2)
    snapshots = []
    opt.register_step_post_hook(lambda *_: snapshots.append([p.detach().clone() for p in plain.parameters()]))
    torch.manual_seed(1)  # the same noise and times in both runs (batches come from ``seed``)
    train_matcher(plain, data, 30, optimizer=opt, seed=0, progress=False, ema=None)
    for n, params in enumerate(snapshots, 1):
        rate = min(0.9, (1 + n) / (10 + n))
        expected = [e * rate + p * (1 - rate) for e, p in zip(expected, params, strict=True)]
    torch.manual_seed(1)
    opt = torch.optim.Adam(averaged.parameters(), lr=1e-2)
    train_matcher(averaged, data, 30, optimizer=opt, seed=0, progress=False, ema=0.9)
    for got, want, last in zip(averaged.parameters(), expected, snapshots[-1], strict=True):
        assert torch.allclose(got, want, atol=1e-6) and not torch.allclose(got, last)


def test_non_finite_loss_is_reported():
    fm = FlowMatcher(TimeMLP(2, (8,)), (2,))
    with torch.no_grad():
        fm.velocity.net[0].weight.fill_(float("inf"))
    with pytest.raises(NonFiniteLossError, match="step 0"):
        train_matcher(fm, torch.randn(10, 2), 5, progress=False)


def test_save_load_round_trip(tmp_path):
    fm = fitted("ot")
    torch.save(fm, tmp_path / "fm.pt")
    loaded = torch.load(tmp_path / "fm.pt", weights_only=False)
    x_0 = torch.randn(50, 2)
    torch.testing.assert_close(loaded.sample(x_0, steps=20), fm.sample(x_0, steps=20), rtol=0, atol=0)
    clone = FlowMatcher(TimeMLP(2, hidden_dims=(64, 64)), (2,))
    clone.load_state_dict(fm.state_dict())
    torch.testing.assert_close(
        clone.log_prob(x_0, method="rk4", step_size=0.1), fm.log_prob(x_0, method="rk4", step_size=0.1)
    )


def test_sinkhorn_coupling_trains():
    torch.manual_seed(0)
    fm = FlowMatcher(TimeMLP(2, (32,)), (2,), coupling=SinkhornOT(reg=0.05, seed=0))
    losses = train_matcher(fm, toy_2d("moons", 2000), 100, lr=3e-3, seed=0, progress=False)
    assert sum(losses[-10:]) < sum(losses[:10])
