"""FlowDistribution agrees with Pyro's TransformedDistribution."""

from __future__ import annotations

import pyro.distributions as dist
import pytest
import torch

import pyroflows
from pyroflows import FlowDistribution


def _perturbed(flow):
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return flow


@pytest.mark.parametrize("factory", [pyroflows.nice, pyroflows.realnvp, pyroflows.maf, pyroflows.iaf, pyroflows.nsf])
def test_log_prob_matches_transformed_distribution(factory):
    torch.manual_seed(0)
    flow = _perturbed(factory(3, num_transforms=3))
    base = dist.Normal(torch.zeros(3), torch.ones(3)).to_event(1)
    data = torch.randn(2, 7, 3)
    expected = dist.TransformedDistribution(base, flow).log_prob(data)
    torch.testing.assert_close(FlowDistribution(base, flow).log_prob(data), expected)


def test_conditional_flow_and_non_pyroflows_layers():
    torch.manual_seed(0)
    flow = _perturbed(pyroflows.nsf(3, context_dim=2, num_transforms=2))
    base = dist.Normal(torch.zeros(3), torch.ones(3)).to_event(1)
    context, data = torch.randn(5, 2), torch.randn(5, 3)
    transforms = [flow.condition(context), dist.transforms.ExpTransform()]
    expected = dist.TransformedDistribution(base, transforms).log_prob(data.exp())
    torch.testing.assert_close(FlowDistribution(base, transforms).log_prob(data.exp()), expected)
    samples = FlowDistribution(base, transforms).rsample()
    assert samples.shape == (5, 3)
