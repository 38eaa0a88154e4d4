"""The Markov source, its exact posterior (forward-backward) and the data; what a denoiser learns of it."""

import itertools
import math

import pytest
import torch

from pyroflows.discrete import (
    DiscreteFlowMatcher,
    ExactMarkovDenoiser,
    MarkovSource,
    MixturePath,
    digits_tokens,
    ngram_distance,
    train_discrete,
)
from pyroflows.nn.tokens import SequenceTransformer


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
    for order in ("random", "entropy", "confidence"):  # one position per step: exact in any order
        gen = torch.Generator().manual_seed(1)
        assert tv(model.sample(n, steps=length, order=order, generator=gen, batch_size=n)) < 1.5 * reference + 0.005


@pytest.mark.parametrize("order", ["entropy", "confidence"])
def test_ordered_log_prob_with_the_exact_markov_denoiser_is_the_source_likelihood(order):
    source = MarkovSource(5, order=2, concentration=0.3, seed=0)
    model = DiscreteFlowMatcher(ExactMarkovDenoiser(source, 8), MixturePath(5, "mask"), 8)
    x = source.sample(50, 8, seed=1)
    assert torch.allclose(model.ordered_log_prob(x, order=order).double(), source.log_prob(x), atol=1e-4)


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
        train_discrete(model, data, 300, batch_size=128, lr=3e-3, seed=0, progress=False)
        with torch.no_grad():
            got = model.logits(x_t, torch.ones(len(x_t)))[:, 4].log_softmax(-1).double()
        kls[pairs] = (exact.exp() * (exact - got)).sum(-1).mean().item()
    assert kls[((-2, -1), (-1, 1), (1, 2))] < 0.25 * kls[()]  # measured: 0.04 against 0.56
