"""Discrete flow matching samplers: CTMC Euler and ordered unmasking, checked against exact posteriors.

The Markov-source checks of the same samplers: ``test_discrete_markov.py``."""

import itertools

import pytest
import torch
from torch import nn

from pyroflows.discrete import DiscreteFlowMatcher, MixturePath, PolynomialKappa
from pyroflows.nn.tokens import SequenceTransformer

from .discrete_cases import PI, ExactPosterior, L, V, exact_model


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


class PeakedAt(nn.Module):
    """Posterior logits with a peak at token 0 of a given sharpness per position; records its inputs."""

    def __init__(self, sharpness) -> None:
        super().__init__()
        self.sharpness, self.inputs = torch.tensor(sharpness, dtype=torch.float), []
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, x_t, t):
        self.inputs.append(x_t.clone())
        logits = torch.zeros(*x_t.shape, V)
        logits[..., 0] = self.sharpness
        return logits + 0 * self.dummy


@pytest.mark.parametrize("order", ["entropy", "confidence"])
def test_ordered_unmasking_draws_the_most_certain_positions_first(order):
    sharpness = [0.0, 3.0, 1.0, 5.0, 2.0, 4.0]
    model = DiscreteFlowMatcher(PeakedAt(sharpness), MixturePath(V), L)
    model.sample(7, steps=2 * L, order=order)  # linear kappa: one position every other step
    inputs = model.net.inputs
    assert len(inputs) == L  # no call on steps that unmask nothing
    revealed = [
        ((a != V) & (b == V)).nonzero()[:, 1].unique().tolist() for a, b in zip(inputs[1:], inputs[:-1], strict=True)
    ]
    assert revealed == [[3], [5], [1], [4], [2]]
    assert all(((b != V) <= (a != V)).all() for a, b in zip(inputs[1:], inputs[:-1], strict=True))  # drawn tokens stay


def test_ordered_unmasking_follows_the_scheduler_and_draws_rather_than_takes_the_mode():
    model = exact_model("mask")
    model.net.calls = 0
    x = model.sample(4000, steps=3, order="entropy", generator=torch.Generator().manual_seed(0), batch_size=4000)
    assert model.net.calls == 3  # two positions per step with a linear kappa
    freqs = torch.bincount(x.flatten(), minlength=V).double() / x.numel()
    assert (freqs - PI.double()).abs().max() < 0.015
    path = MixturePath(V, "mask", PolynomialKappa(2.0))
    model = DiscreteFlowMatcher(ExactPosterior(path), path, L)
    model.sample(3, steps=6, order="random")
    assert model.net.calls == 5  # visible after each step: round(6 ((k + 1) / 6)^2) = 0, 1, 2, 3, 4, 6


@pytest.mark.parametrize("order,steps", [("entropy", 4), ("confidence", 4), ("entropy", 2)])
def test_ordered_log_prob_is_the_samplers_normalised_law(order, steps):
    """An untrained transformer: the log-probabilities of all 3^4 sequences sum to one and match
    the frequencies of the sampler's draws (also with two positions per step)."""
    torch.manual_seed(0)
    path = MixturePath(3, "mask")
    model = DiscreteFlowMatcher(SequenceTransformer(4, 4, 3, dim=16, depth=1, heads=2), path, 4).eval()
    every = torch.tensor(list(itertools.product(range(3), repeat=4)))
    law = model.ordered_log_prob(every, steps, order).double().exp()
    assert law.sum().item() == pytest.approx(1.0, abs=1e-5)
    x = model.sample(20_000, steps=steps, order=order, generator=torch.Generator().manual_seed(1), batch_size=20_000)
    freqs = torch.bincount((x * 3 ** torch.arange(3, -1, -1)).sum(-1), minlength=81).double() / len(x)
    assert 0.5 * (freqs - law).abs().sum().item() < 0.04  # an i.i.d. sample of 20k over 81 cells: about 0.025


def test_top_k_one_and_low_temperature_pick_the_mode():
    model = exact_model("mask")
    assert (model.sample(50, steps=8, top_k=1) == 0).all()
    assert (model.sample(50, steps=8, temperature=1e-3) == 0).all()
    x = model.sample(2000, steps=8, top_p=0.6)  # tokens 0 and 1 hold 0.75 > 0.6 >= 0.5
    assert set(x.unique().tolist()) == {0, 1}
