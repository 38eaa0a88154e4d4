"""Discrete flow matching: paths, exact-posterior checks of the ELBO, training, self-conditioning, errors.

The samplers: ``test_discrete_sampling.py``; the networks and the autoregressive baseline:
``test_discrete_networks.py``; the Markov source, its exact denoiser and the data:
``test_discrete_markov.py``."""

import io
import itertools
import math

import pytest
import torch
from torch import nn

from pyroflows.discrete import (
    CosineKappa,
    DiscreteFlowMatcher,
    KappaScheduler,
    MixturePath,
    PolynomialKappa,
    train_discrete,
)
from pyroflows.nn.tokens import SequenceTransformer
from pyroflows.training import NonFiniteLossError

from .discrete_cases import PI, ExactPosterior, L, V, exact_model, iid_data


@pytest.mark.parametrize("scheduler", [PolynomialKappa(1.0), PolynomialKappa(2.0), CosineKappa()])
def test_scheduler_ends_and_derivative(scheduler):
    t = torch.linspace(0.01, 0.99, 50, dtype=torch.float64, requires_grad=True)
    kappa, d_kappa = scheduler(t)
    (grad,) = torch.autograd.grad(kappa.sum(), t)
    assert torch.allclose(grad, d_kappa)
    ends = scheduler(torch.tensor([0.0, 1.0], dtype=torch.float64))[0]
    assert torch.allclose(ends, torch.tensor([0.0, 1.0], dtype=torch.float64))
    assert torch.allclose(scheduler.inverse(kappa.detach()), t.detach())
    assert torch.allclose(KappaScheduler.inverse(scheduler, kappa.detach()), t.detach())  # the bisection


@pytest.mark.parametrize("source", ["mask", "uniform"])
def test_path_interpolates_source_and_data(source):
    path = MixturePath(V, source)
    x_1 = iid_data(4000)
    x_0 = path.sample_source(x_1.shape)
    assert torch.equal(path.sample(x_0, x_1, torch.zeros(4000)), x_0)
    assert torch.equal(path.sample(x_0, x_1, torch.ones(4000)), x_1)
    x_t = path.sample(x_0, x_1, torch.full((4000,), 0.3))
    from_data = (x_t == x_1) & (x_t != x_0)
    expected = 0.3 * (x_1 != x_0).double().mean()
    assert abs(from_data.double().mean() - expected) < 0.01
    if source == "mask":
        assert (x_0 == V).all() and path.input_vocab_size == V + 1
    else:
        assert x_0.max() < V and path.input_vocab_size == V


def test_elbo_is_exact_for_the_mask_source_with_the_true_posterior():
    """For an absorbing (mask) path and the exact posterior the bound is tight: ELBO = -log p(x)."""
    torch.manual_seed(0)
    model, x = exact_model("mask"), iid_data(2000)
    nll = -PI.log()[x].sum(-1)
    bound = model.elbo(x, num_times=64)
    assert abs(bound.mean() - nll.mean()) < 0.05 * nll.std() + 0.02
    assert torch.allclose(model.elbo(x[:1], num_times=2000), nll[:1], rtol=0.05)


class ContextNet(nn.Module):
    """Logits that depend on every visible token (a fixed random linear map of the
    one-hot input) and not on time: the model's likelihood is then an average over
    unmasking orders, enumerable for short sequences."""

    def __init__(self, vocab: int, length: int, seed: int = 0) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.vocab, self.length = vocab, length
        self.weight = nn.Parameter(1.5 * torch.randn(length * (vocab + 1), length * vocab, generator=gen))

    def forward(self, x_t, t):
        one_hot = nn.functional.one_hot(x_t, self.vocab + 1).to(self.weight).flatten(1)
        return (one_hot @ self.weight).view(len(x_t), self.length, self.vocab)


def order_averaged_log_prob(model: DiscreteFlowMatcher, x: torch.Tensor) -> torch.Tensor:
    """``log mean_orders prod_j p(x^{o_j} | x^{o_<j})`` for a time-free network, by enumeration."""
    length, mask = x.shape[1], model.path.mask_token
    per_order = []
    for order in itertools.permutations(range(length)):
        total = torch.zeros(len(x))
        visible = torch.zeros_like(x, dtype=torch.bool)
        for i in order:
            x_t = torch.where(visible, x, torch.full_like(x, mask))
            log_p = model.logits(x_t, torch.zeros(len(x)))[:, i].log_softmax(-1)
            total += log_p.gather(-1, x[:, i : i + 1]).squeeze(-1)
            visible[:, i] = True
        per_order.append(total)
    return torch.stack(per_order).logsumexp(0) - math.log(len(per_order))


def test_iw_bound_tightens_to_the_order_averaged_likelihood_the_sampler_draws_from():
    vocab, length = 3, 4
    path = MixturePath(vocab, "mask")
    model = DiscreteFlowMatcher(ContextNet(vocab, length), path, length)
    every = torch.tensor(list(itertools.product(range(vocab), repeat=length)))
    with torch.no_grad():
        log_p = order_averaged_log_prob(model, every)
        assert abs(log_p.logsumexp(0).item()) < 1e-5  # a normalised distribution
        # the sampler (many small steps) draws from it
        draws = model.sample(40_000, steps=200, generator=torch.Generator().manual_seed(0))
        index = (draws * vocab ** torch.arange(length - 1, -1, -1)).sum(-1)
        freqs = torch.bincount(index, minlength=len(every)).double() / len(draws)
        assert (freqs - log_p.exp().double()).abs().max() < 0.01
        x = every[log_p.argsort()[::8]]  # likely and unlikely sequences
        gen = torch.Generator().manual_seed(1)
        one = model.iw_bound(x.repeat(1000, 1), 1, generator=gen).view(1000, -1)
        torch.manual_seed(2)
        elbo = model.elbo(x.repeat(100, 1), num_times=64).view(100, -1)
        tight = model.iw_bound(x, 4000, generator=gen)
    se = (one.var(0) / len(one) + elbo.var(0) / len(elbo)).sqrt()
    assert ((one.mean(0) - elbo.mean(0)).abs() < 4 * se + 1e-3).all()  # one sample: the ELBO's mean
    assert (one.mean(0) > -log_p[log_p.argsort()[::8]] + 0.05).any()  # the ELBO is loose here
    error = (tight + log_p[log_p.argsort()[::8]]).abs()
    assert error.max() < 0.15 and error.mean() < 0.08  # many samples: tight


def uniform_elbo_by_quadrature(n: int = 100_000) -> float:
    """The per-position ELBO of the exact model for i.i.d. ``PI`` data and a uniform source,
    by a midpoint rule in t and enumeration of ``(x_1, x_t)``: an independent check of the estimator."""
    pi = PI.double()
    kappa = ((torch.arange(n, dtype=torch.float64) + 0.5) / n)[:, None, None]
    same = torch.eye(V, dtype=torch.float64)
    q = kappa * same + (1 - kappa) / V  # q[t, x_1, x_t]
    post = pi[None, :, None] * q
    post = post / post.sum(1, keepdim=True)  # p(x_1 | x_t)
    stay = torch.diagonal(post, dim1=1, dim2=2)[:, None, :]
    integrand = ((1 - stay) - (1 - same) * (1 + post.log())) / (1 - kappa)
    return (pi[None, :, None] * q * integrand).sum((1, 2)).mean().item()


def test_elbo_of_the_uniform_source_matches_quadrature_and_bounds_the_nll():
    torch.manual_seed(0)
    model, x = exact_model("uniform"), iid_data(4000)
    nll = -PI.log()[x].sum(-1).mean().item()
    bound = model.elbo(x, num_times=64).mean().item()
    exact = L * uniform_elbo_by_quadrature()
    assert abs(bound - exact) < 0.02 * exact
    assert exact > nll  # the bound is valid, and (unlike the mask source's) not tight


def test_bad_inputs_raise_clear_errors():
    model = exact_model("mask")
    with pytest.raises(ValueError, match="int64 tokens of shape"):
        model.loss(torch.zeros(3, L))
    with pytest.raises(ValueError, match=r"shape \(batch, 6\)"):
        model.loss(torch.zeros(3, L + 1, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        model.loss(torch.full((3, L), V, dtype=torch.long))
    with pytest.raises(ValueError, match="kind"):
        model.loss(iid_data(3), kind="mse")
    with pytest.raises(ValueError, match="needs a mask source"):
        exact_model("uniform").sample(3, corrector=1.0)
    with pytest.raises(ValueError, match="order must be None or one of"):
        model.sample(3, order="left-to-right")
    with pytest.raises(ValueError, match="order needs a mask source"):
        exact_model("uniform").sample(3, order="entropy")
    with pytest.raises(ValueError, match="and corrector 1.0"):
        model.sample(3, order="entropy", corrector=1.0)
    with pytest.raises(ValueError, match=r"\(deterministic\), got 'random'"):
        model.ordered_log_prob(iid_data(3), order="random")
    with pytest.raises(ValueError, match="ordered_log_prob needs a mask source"):
        exact_model("uniform").ordered_log_prob(iid_data(3))
    for temperature in (0, math.nan, math.inf):
        with pytest.raises(ValueError, match="temperature"):
            model.sample(3, temperature=temperature)
    for corrector in (-1.0, math.nan, math.inf):
        with pytest.raises(ValueError, match="corrector"):
            model.sample(3, corrector=corrector)
    with pytest.raises(ValueError, match="iw_bound needs a mask source"):
        exact_model("uniform").iw_bound(iid_data(3))
    with pytest.raises(ValueError, match="num_samples"):
        model.iw_bound(iid_data(3), num_samples=0)
    with pytest.raises(ValueError, match="source"):
        MixturePath(V, "gaussian")
    bad = DiscreteFlowMatcher(SequenceTransformer(V + 1, L, V + 1, dim=8, depth=1, heads=2), MixturePath(V), L)
    with pytest.raises(ValueError, match=r"logits of shape \(3, 6, 4\)"):
        bad.loss(iid_data(3))


class NaNNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor(float("nan")))

    def forward(self, x, t):
        return self.w * torch.ones(*x.shape, V)


def test_training_detects_non_finite_loss():
    model = DiscreteFlowMatcher(NaNNet(), MixturePath(V), L)
    with pytest.raises(NonFiniteLossError, match="step 0"):
        train_discrete(model, iid_data(64), 5, progress=False)


@pytest.mark.parametrize("source,kind", [("mask", "ce"), ("uniform", "kl")])
def test_training_learns_the_marginal(source, kind):
    torch.manual_seed(0)
    path = MixturePath(V, source)
    model = DiscreteFlowMatcher(SequenceTransformer(path.input_vocab_size, L, V, dim=16, depth=1, heads=2), path, L)
    data, test = iid_data(2000), iid_data(500, seed=1)
    before = model.elbo(test, num_times=8).mean()
    losses = train_discrete(model, data, 300, batch_size=128, lr=3e-3, loss=kind, seed=0, progress=False)
    after = model.elbo(test, num_times=16).mean()
    if source == "mask":  # the tight bound: the NLL
        assert after < before and after < 1.15 * -PI.log()[test].sum(-1).mean()
    else:  # the best bound (loose, and sensitive to confidence near t = 1)
        assert after < before and after < 1.25 * L * uniform_elbo_by_quadrature(10_000)
    assert len(losses) == 300


def test_training_can_end_with_the_weight_average():
    models = []
    for _ in range(2):  # the same initial weights
        torch.manual_seed(0)
        path = MixturePath(V)
        models.append(DiscreteFlowMatcher(SequenceTransformer(path.input_vocab_size, L, V, dim=8, depth=1), path, L))
    plain, averaged = models
    expected = [p.detach().clone() for p in plain.parameters()]
    opt = torch.optim.Adam(plain.parameters(), lr=1e-2)
    snapshots = []
    opt.register_step_post_hook(lambda *_: snapshots.append([p.detach().clone() for p in plain.parameters()]))
    torch.manual_seed(1)  # the same masking times in both runs (batches come from ``seed``)
    train_discrete(plain, iid_data(200), 20, optimizer=opt, seed=0, progress=False)
    for n, params in enumerate(snapshots, 1):
        rate = min(0.9, (1 + n) / (10 + n))
        expected = [e * rate + p * (1 - rate) for e, p in zip(expected, params, strict=True)]
    torch.manual_seed(1)
    opt = torch.optim.Adam(averaged.parameters(), lr=1e-2)
    train_discrete(averaged, iid_data(200), 20, optimizer=opt, seed=0, progress=False, ema=0.9)
    for got, want in zip(averaged.parameters(), expected, strict=True):
        assert torch.allclose(got, want, atol=1e-6)


def test_save_load_round_trip():
    torch.manual_seed(0)
    path = MixturePath(V, "mask")
    model = DiscreteFlowMatcher(SequenceTransformer(V + 1, L, V, dim=16, depth=1, heads=2), path, L)
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    clone = DiscreteFlowMatcher(SequenceTransformer(V + 1, L, V, dim=16, depth=1, heads=2), path, L)
    clone.load_state_dict(torch.load(buffer))
    x, t = path.sample_source((3, L)), torch.rand(3)
    assert torch.equal(model.logits(x, t), clone.logits(x, t))


class BeliefRecorder(ExactPosterior):
    """The exact posterior, recording the beliefs each call reads (self-conditioning)."""

    def __init__(self, path: MixturePath) -> None:
        super().__init__(path)
        self.seen: list[torch.Tensor] = []

    def forward(self, x_t, t, beliefs):
        self.seen.append(beliefs.clone())
        return super().forward(x_t, t) + 0 * beliefs.sum()


def test_self_conditioning_feeds_back_beliefs_in_logits_training_and_sampling():
    path = MixturePath(V, "mask")
    model = DiscreteFlowMatcher(BeliefRecorder(path), path, L, self_condition=True)
    net = model.net
    x_t = torch.tensor([[V, 1, V, 0, V, V]] * 3)
    model.logits(x_t, torch.full((3,), 0.5))  # two calls: zeros, then the first call's beliefs
    first, second = net.seen
    assert (first == 0).all()
    masked = (x_t == V)[..., None]
    assert torch.allclose(second, torch.where(masked, PI, torch.zeros(V)).expand(3, L, V))
    net.seen.clear()
    model.loss(iid_data(400))  # beliefs for about half of the batch, zeros for the rest
    fed = net.seen[1].flatten(1).abs().sum(-1) > 0
    assert 120 < fed.sum() < 280 and not net.seen[1].requires_grad
    net.seen.clear()
    x = model.sample(500, steps=5, generator=torch.Generator().manual_seed(0))
    assert len(net.seen) == 5 and (net.seen[0] == 0).all()  # one call per step
    later = net.seen[-1]
    assert torch.allclose(later.sum(-1)[later.sum(-1) > 0], torch.ones(())) and (later.sum(-1) == 0).any()
    freqs = torch.bincount(x.flatten(), minlength=V).double() / x.numel()
    assert (freqs - PI.double()).abs().max() < 0.03
    net.seen.clear()
    model.sample(50, steps=L, order="entropy")  # ordered: the previous call's beliefs, zero where drawn
    assert len(net.seen) == L and (net.seen[0] == 0).all()
    for k, beliefs in enumerate(net.seen[1:], start=1):
        mass = beliefs.sum(-1)
        assert ((mass == 0).sum(-1) == k).all() and torch.allclose(mass[mass > 0], torch.ones(()))


def test_sequence_transformer_reads_beliefs_only_when_built_to():
    torch.manual_seed(0)
    net = SequenceTransformer(V + 1, L, V, dim=16, depth=1, heads=2, self_condition=True)
    x, t = torch.full((2, L), V), torch.rand(2)
    beliefs = torch.softmax(torch.randn(2, L, V), -1)
    assert not torch.allclose(net(x, t, beliefs), net(x, t))
    assert torch.allclose(net(x, t, torch.zeros(2, L, V)), net(x, t))
    with pytest.raises(ValueError, match=r"beliefs must have shape \(2, 6, 4\)"):
        net(x, t, beliefs[..., :2])
    with pytest.raises(TypeError, match="takes no beliefs"):
        DiscreteFlowMatcher(ExactPosterior(MixturePath(V)), MixturePath(V), L, self_condition=True)
    with pytest.raises(ValueError, match="without self_condition"):
        SequenceTransformer(V + 1, L, V, dim=16, depth=1, heads=2)(x, t, beliefs)


def test_training_decays_the_learning_rate_on_a_cosine():
    torch.manual_seed(0)
    path = MixturePath(V)
    model = DiscreteFlowMatcher(SequenceTransformer(path.input_vocab_size, L, V, dim=8, depth=1), path, L)
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    rates = []
    opt.register_step_pre_hook(lambda o, *_: rates.append(o.param_groups[0]["lr"]))
    train_discrete(model, iid_data(64), 10, optimizer=opt, seed=0, progress=False, decay=True)
    expected = [0.05 * (1 + math.cos(math.pi * k / 10)) for k in range(10)]
    assert rates == pytest.approx(expected)
