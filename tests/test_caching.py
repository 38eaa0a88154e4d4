"""The base class's cache: one conditioner pass per layer, never stale."""

from __future__ import annotations

import pyro.distributions as dist
import pytest
import torch

import pyroflows
from pyroflows.transforms import AffineAutoregressive, SplineCoupling


def _count_calls(modules):
    counts = {"n": 0}

    def hook(*_):
        counts["n"] += 1

    for m in modules:
        m.register_forward_hook(hook)
    return counts


def _dist(flow, dim=4):
    return dist.TransformedDistribution(dist.Normal(torch.zeros(dim), 1.0).to_event(1), flow)


@pytest.mark.parametrize("factory", [pyroflows.nsf, pyroflows.realnvp, pyroflows.maf])
def test_log_prob_costs_one_conditioner_pass_per_layer(factory):
    flow = factory(4, num_transforms=3)
    nets = [m for m in flow.modules() if type(m).__name__ in ("DenseNN", "MADE")]
    counts = _count_calls(nets)
    _dist(flow).log_prob(torch.randn(10, 4))
    assert counts["n"] == len(nets) == 3


def test_iaf_sample_then_log_prob_skips_the_inverse():
    flow = pyroflows.iaf(4, num_transforms=3)
    nets = [m for m in flow.modules() if type(m).__name__ == "MADE"]
    counts = _count_calls(nets)
    d = _dist(flow)
    y = d.rsample((7,))
    d.log_prob(y)
    assert counts["n"] == 3  # the sequential inverse would cost 4 passes per layer


@pytest.mark.parametrize("factory", [pyroflows.nsf, pyroflows.iaf, pyroflows.maf])
def test_no_stale_results_after_an_optimiser_step(factory):
    torch.manual_seed(0)
    flow = factory(3, num_transforms=2)
    d = _dist(flow, 3)
    opt = torch.optim.Adam(flow.parameters(), lr=0.05)
    data = torch.randn(32, 3) * 2 + 1  # the same tensor object every step
    losses = []
    for _ in range(5):
        loss = -d.log_prob(data).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        fresh = _dist(factory(3, num_transforms=2), 3)
        fresh_flow = fresh.transforms[0]
        fresh_flow.load_state_dict(flow.state_dict())
        torch.testing.assert_close(d.log_prob(data), fresh.log_prob(data))
    assert losses[-1] < losses[0]


@pytest.mark.parametrize("factory", [pyroflows.nsf, pyroflows.iaf, pyroflows.maf])
def test_backward_twice_without_a_step_never_reuses_a_freed_graph(factory):
    d = _dist(factory(3, num_transforms=2), 3)
    data = torch.randn(5, 3)
    lp = d.log_prob(data)
    lp.sum().backward()
    lp_again = d.log_prob(data)  # the same tensor: the cache must not serve freed graphs
    lp_again.sum().backward()
    torch.testing.assert_close(lp, lp_again)
    y = d.rsample((4,))
    d.log_prob(y).sum().backward()
    d.log_prob(y.detach()).sum().backward()


def test_two_log_probs_of_one_tensor_before_a_backward_share_a_graph_as_documented():
    d = _dist(pyroflows.nsf(3, num_transforms=2), 3)
    data = torch.randn(5, 3)
    first, second = d.log_prob(data), d.log_prob(data)  # the second is served from the cache
    first.sum().backward(retain_graph=True)
    second.sum().backward()  # fine with retain_graph on the first
    first, second = d.log_prob(data), d.log_prob(data.clone())  # or a new tensor: its own graph
    first.sum().backward()
    second.sum().backward()


def test_sample_without_grad_then_log_prob_with_grad_reaches_parameters():
    layer = SplineCoupling(4)
    d = _dist(layer)
    y = d.sample((6,))  # under no_grad
    d.log_prob(y).sum().backward()
    assert all(p.grad is not None for p in layer.parameters())


def test_inverse_is_cached_for_iaf_layer_only_backwards():
    layer = AffineAutoregressive(3, mode="iaf")
    x = torch.randn(4, 3)
    y = layer(x)
    assert layer.inv(y) is x
    assert layer.inv(y.clone()) is not x
