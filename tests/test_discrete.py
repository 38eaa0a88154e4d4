"""Discrete flow matching: paths, exact-posterior checks of the ELBO and the sampler, baselines, data."""

import io
import itertools
import math

import pytest
import torch
from torch import nn

from pyroflows.discrete import (
    AutoregressiveModel,
    Cosine,
    DiscreteFlowMatcher,
    ExactMarkovDenoiser,
    KappaScheduler,
    MarkovSource,
    MixturePath,
    Polynomial,
    digits_tokens,
    ngram_distance,
    train,
)
from pyroflows.infer.fit import NonFiniteLossError
from pyroflows.nn.tokens import ConvNet8, SequenceTransformer

V, L = 4, 6
PI = torch.tensor([0.5, 0.25, 0.15, 0.10])  # i.i.d. positions: the posterior is known in closed form


class ExactPosterior(nn.Module):
    """The true ``p(x_1^i | x_t)`` when positions are i.i.d. ``PI`` (mask or uniform source)."""

    def __init__(self, path: MixturePath) -> None:
        super().__init__()
        self.path = path
        self.calls = 0
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, x_t, t):
        self.calls += 1
        logits = PI.log().expand(*x_t.shape, V).clone()
        if self.path.source == "uniform":  # p(y | z) ~ PI(y) (kappa 1(y = z) + (1 - kappa) / V)
            kappa = self.path.scheduler(t)[0][:, None, None]
            same = nn.functional.one_hot(x_t, V).to(logits)
            logits = logits + (kappa * same + (1 - kappa) / V).log()
        return logits + 0 * self.dummy


def exact_model(source: str) -> DiscreteFlowMatcher:
    path = MixturePath(V, source)
    return DiscreteFlowMatcher(ExactPosterior(path), path, L)


def iid_data(n: int, seed: int = 0) -> torch.Tensor:
    return torch.multinomial(PI, n * L, replacement=True, generator=torch.Generator().manual_seed(seed)).view(n, L)


@pytest.mark.parametrize("scheduler", [Polynomial(1.0), Polynomial(2.0), Cosine()])
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


@pytest.mark.parametrize("source,corrector", [("mask", 0.0), ("mask", 2.0), ("uniform", 0.0)])
def test_sampler_with_true_posterior_draws_the_data_marginal(source, corrector):
    model = exact_model(source)
    gen = torch.Generator().manual_seed(1)
    x = model.sample(5000, steps=32, corrector=corrector, generator=gen)
    assert x.shape == (5000, L) and x.min() >= 0 and x.max() < V
    freqs = torch.bincount(x.flatten(), minlength=V).double() / x.numel()
    assert (freqs - PI.double()).abs().max() < 0.015


def test_sampler_cost_is_one_network_call_per_step():
    model = exact_model("mask")
    for steps in (1, 8, 33):
        model.net.calls = 0
        model.sample(10, steps=steps)
        assert model.net.calls == steps


def test_top_k_one_and_low_temperature_pick_the_mode():
    model = exact_model("mask")
    assert (model.sample(50, steps=8, top_k=1) == 0).all()
    assert (model.sample(50, steps=8, temperature=1e-3) == 0).all()
    x = model.sample(2000, steps=8, top_p=0.6)  # tokens 0 and 1 hold 0.75 > 0.6 >= 0.5
    assert set(x.unique().tolist()) == {0, 1}


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
    with pytest.raises(ValueError, match="temperature"):
        model.sample(3, temperature=0)
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
        train(model, iid_data(64), 5, progress=False)


@pytest.mark.parametrize("source,kind", [("mask", "ce"), ("uniform", "kl")])
def test_training_learns_the_marginal(source, kind):
    torch.manual_seed(0)
    path = MixturePath(V, source)
    model = DiscreteFlowMatcher(SequenceTransformer(path.input_vocab_size, L, V, dim=16, depth=1, heads=2), path, L)
    data, test = iid_data(2000), iid_data(500, seed=1)
    before = model.elbo(test, num_times=8).mean()
    losses = train(model, data, 300, batch_size=128, lr=3e-3, loss=kind, seed=0, progress=False)
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
    train(plain, iid_data(200), 20, optimizer=opt, seed=0, progress=False)
    for n, params in enumerate(snapshots, 1):
        rate = min(0.9, (1 + n) / (10 + n))
        expected = [e * rate + p * (1 - rate) for e, p in zip(expected, params, strict=True)]
    torch.manual_seed(1)
    opt = torch.optim.Adam(averaged.parameters(), lr=1e-2)
    train(averaged, iid_data(200), 20, optimizer=opt, seed=0, progress=False, ema=0.9)
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


@pytest.mark.parametrize("pairs", [(), ((-1, 0), (-2, -1), (-2, 0))])
def test_autoregressive_model_is_normalised_and_causal(pairs):
    torch.manual_seed(0)
    model = AutoregressiveModel(3, length=4, dim=16, depth=1, heads=2, pairs=pairs)
    for table in model.net.pair_logits:  # zero at initialisation: give them something to leak
        nn.init.normal_(table.weight)
    every = torch.tensor(list(itertools.product(range(3), repeat=4)))
    assert torch.allclose(model.log_prob(every).exp().sum(), torch.tensor(1.0), atol=1e-5)
    x = every[:1].clone()
    logits = model.net(x)
    x[0, 3] = (x[0, 3] + 1) % 3
    assert torch.allclose(model.net(x)[0, :3], logits[0, :3], atol=1e-6)  # earlier positions unchanged
    assert model.sample(5).shape == (5, 4)
    losses = train(model, every[every[:, 0] == 0], 50, lr=1e-2, loss="nll", seed=0, progress=False)
    assert losses[-1] < losses[0]


def test_markov_source_is_normalised_stationary_and_exact():
    source = MarkovSource(vocab_size=3, order=2, concentration=0.5, seed=0)
    every = torch.tensor(list(itertools.product(range(3), repeat=5)))
    log_p = source.log_prob(every)
    assert torch.allclose(log_p.exp().sum(), torch.tensor(1.0, dtype=torch.float64))
    exact = -(log_p.exp() * log_p).sum() / 5
    assert math.isclose(source.entropy_per_token(5), exact.item(), rel_tol=1e-9)
    x = source.sample(40_000, length=8, seed=1)
    first, last = (torch.bincount(x[:, i], minlength=3).double() / len(x) for i in (0, 7))
    assert (first - last).abs().max() < 0.02  # stationary: every position has the same marginal
    assert ngram_distance(x[:20_000], x[20_000:], n=2, vocab_size=3) < 0.02


def test_ngram_distance_extremes_and_digits():
    a = torch.zeros(10, 5, dtype=torch.long)
    assert ngram_distance(a, a) == 0.0
    assert ngram_distance(a, a + 1, vocab_size=2) == 1.0
    tokens, labels = digits_tokens()
    assert tokens.shape == (1797, 64) and tokens.dtype == torch.long
    assert tokens.min() == 0 and tokens.max() == 16 and labels.shape == (1797,)


def test_networks_shapes():
    net = ConvNet8(18, 17, embed_dim=8, width=8)
    assert net(torch.zeros(2, 64, dtype=torch.long), torch.rand(2)).shape == (2, 64, 17)
    seq = SequenceTransformer(5, 7, 4, dim=16, depth=1, heads=2)
    assert seq(torch.zeros(3, 7, dtype=torch.long), torch.tensor(0.5)).shape == (3, 7, 4)
    with pytest.raises(ValueError, match="reads a time"):
        seq(torch.zeros(3, 7, dtype=torch.long))


def test_pair_embeddings_read_the_named_neighbours_and_pad_the_ends():
    torch.manual_seed(0)
    net = SequenceTransformer(4, 6, 3, dim=8, depth=1, heads=2, time=False, pairs=((-1, 1),))
    nn.init.zeros_(net.out.weight)  # leave the direct pair logits alone on the output
    nn.init.zeros_(net.out.bias)
    nn.init.normal_(net.pair_logits[0].weight)
    x = torch.tensor([[0, 1, 2, 3, 0, 1]])
    y = x.clone()
    y[0, 3] = 1
    changed = (net(x) - net(y)).abs().sum(-1)[0].nonzero().flatten().tolist()
    assert changed == [2, 4]  # the positions whose pair (i - 1, i + 1) holds position 3
    pad = 4
    table = net.pair_logit_scale * net.pair_logits[0].weight
    assert torch.allclose(net(x)[0, 0], table[pad * 5 + 1])  # (off the start, x[1])
    assert torch.allclose(net(x)[0, 5], table[0 * 5 + pad])  # (x[4], off the end)
    with pytest.raises(ValueError, match="offset"):
        SequenceTransformer(4, 6, pairs=((-1, 6),))
    with pytest.raises(ValueError, match="<= 0"):
        AutoregressiveModel(3, length=4, pairs=((-1, 1),))


def enumerated_posterior(source: MarkovSource, x_t: torch.Tensor) -> torch.Tensor:
    """``p(x^i = v | unmasked)`` by summing the source's probability over every sequence."""
    vocab, length = source.vocab_size, x_t.shape[1]
    every = torch.tensor(list(itertools.product(range(vocab), repeat=length)))
    log_p = source.log_prob(every)
    out = torch.zeros(*x_t.shape, vocab, dtype=torch.float64)
    for b, row in enumerate(x_t):
        weights = torch.where(((every == row) | (row == vocab)).all(1), log_p, -math.inf).softmax(0)
        for i in range(length):
            out[b, i].index_add_(0, every[:, i], weights)
    return out


@pytest.mark.parametrize("order", [1, 2, 3])
def test_exact_markov_denoiser_matches_enumeration(order):
    source = MarkovSource(3, order=order, concentration=0.5, seed=order)
    x = source.sample(6, 6, seed=0)
    masked = torch.rand(x.shape, generator=torch.Generator().manual_seed(1)) < 0.5
    x_t = torch.where(masked, 3, x)
    got = ExactMarkovDenoiser(source, 6)(x_t).double().exp()
    assert torch.allclose(got, enumerated_posterior(source, x_t), atol=1e-6)
    assert torch.equal(got[~masked].argmax(-1), x[~masked])  # a point mass where observed


def test_iw_bound_with_the_exact_markov_denoiser_is_the_exact_nll():
    """Every unmasking order factorises ``p(x)`` exactly, so one importance sample is already exact."""
    source = MarkovSource(5, order=2, concentration=0.3, seed=0)
    model = DiscreteFlowMatcher(ExactMarkovDenoiser(source, 8), MixturePath(5, "mask"), 8)
    x = source.sample(50, 8, seed=1)
    bound = model.iw_bound(x, 1, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(bound.double(), -source.log_prob(x), atol=1e-3)


def test_sampler_with_the_exact_markov_denoiser_draws_the_joint():
    """Dependent positions: with many steps the sampler draws the source's joint law (as close as an
    i.i.d. sample of the same size); with two steps, positions unmasked together come out independent."""
    source, length, n = MarkovSource(3, order=2, concentration=0.3, seed=0), 5, 20_000
    model = DiscreteFlowMatcher(ExactMarkovDenoiser(source, length), MixturePath(3, "mask"), length)
    every = torch.tensor(list(itertools.product(range(3), repeat=length)))
    truth = source.log_prob(every).exp()

    def tv(x):
        freqs = torch.bincount((x * 3 ** torch.arange(length - 1, -1, -1)).sum(-1), minlength=len(every))
        return 0.5 * (freqs.double() / len(x) - truth).abs().sum().item()

    reference = tv(source.sample(n, length, seed=3))
    fine = tv(model.sample(n, steps=256, generator=torch.Generator().manual_seed(1), batch_size=n))
    coarse = tv(model.sample(n, steps=2, generator=torch.Generator().manual_seed(1), batch_size=n))
    assert fine < 1.5 * reference + 0.005
    assert coarse > 3 * reference


def test_pair_tables_learn_the_posterior_between_visible_neighbours():
    """One masked position, both neighbours on each side visible: an order-2 chain's posterior is a
    product of three transition terms, one pair table each; single-token embeddings learn it slower."""
    source, length = MarkovSource(5, order=2, concentration=0.3, seed=0), 8
    data, test = source.sample(4000, length, seed=1), source.sample(300, length, seed=2)
    x_t = test.clone()
    x_t[:, 4] = 5  # the mask
    exact = ExactMarkovDenoiser(source, length)(x_t)[:, 4].double()
    kls = {}
    for pairs in [(), ((-2, -1), (-1, 1), (1, 2))]:
        torch.manual_seed(0)
        path = MixturePath(5, "mask")
        net = SequenceTransformer(6, length, 5, dim=16, depth=1, heads=2, pairs=pairs)
        model = DiscreteFlowMatcher(net, path, length)
        train(model, data, 300, batch_size=128, lr=3e-3, seed=0, progress=False)
        with torch.no_grad():
            got = model.logits(x_t, torch.ones(len(x_t)))[:, 4].log_softmax(-1).double()
        kls[pairs] = (exact.exp() * (exact - got)).sum(-1).mean().item()
    assert kls[((-2, -1), (-1, 1), (1, 2))] < 0.25 * kls[()]  # measured: 0.04 against 0.56
