"""Factories build working flows, conditional ones included, inside Pyro."""

from __future__ import annotations

import functools

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.distributions.conditional import ConditionalComposeTransformModule
from pyro.distributions.torch_transform import ComposeTransformModule

import pyroflows
from pyroflows.datasets import TOY_2D, toy_2d

FACTORIES = [pyroflows.nice, pyroflows.realnvp, pyroflows.maf, pyroflows.iaf, pyroflows.nsf]


def _base(dim):
    return dist.Normal(torch.zeros(dim), torch.ones(dim)).to_event(1)


@pytest.mark.parametrize("factory", FACTORIES, ids=lambda f: f.__name__)
def test_factory_learns_a_correlated_gaussian(factory):
    torch.manual_seed(0)
    cov = torch.tensor([[1.0, 0.9, 0.0], [0.9, 1.0, 0.3], [0.0, 0.3, 1.0]]) * 1.5
    target = dist.MultivariateNormal(torch.tensor([1.0, -1.0, 0.5]), cov)  # mostly inside nsf's box
    data = target.sample((4096,))
    flow = factory(3, num_transforms=4, hidden_dims=(32, 32))
    assert isinstance(flow, ComposeTransformModule)
    model = pyroflows.FlowDistribution(_base(3), flow)
    optimizer = torch.optim.Adam(flow.parameters(), lr=3e-3)
    for _ in range(300):
        loss = -model.log_prob(data[torch.randint(4096, (256,))]).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        nll = -model.log_prob(data).mean().item()
        samples = model.sample((2000,))
    entropy = target.entropy().item()
    assert nll < entropy + 0.15, (nll, entropy)
    assert (samples.mean(0) - target.mean).abs().max() < 0.3


@pytest.mark.parametrize("factory", FACTORIES, ids=lambda f: f.__name__)
def test_conditional_factory_in_conditional_transformed_distribution(factory):
    torch.manual_seed(0)
    flow = factory(3, context_dim=2, num_transforms=2, hidden_dims=(16,))
    assert isinstance(flow, ConditionalComposeTransformModule)
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(0.1 * torch.randn_like(p))
    cond = dist.ConditionalTransformedDistribution(_base(3), [flow])
    context = torch.randn(5, 2)
    d = cond.condition(context)
    x = d.rsample()
    assert x.shape == (5, 3)
    lp = d.log_prob(x)
    assert lp.shape == (5,) and torch.isfinite(lp).all()
    other = cond.condition(context + 1.0).log_prob(x)
    assert (lp - other).abs().max() > 1e-4
    (d.log_prob(torch.randn(5, 3)).sum() + x.sum()).backward()
    assert all(p.grad is not None for p in flow.parameters())


def test_flow_in_a_pyro_model_with_svi():
    """A flow as a learnable guide for a Pyro model, trained with SVI."""
    pyro.clear_param_store()
    torch.manual_seed(0)

    def model():
        pyro.sample("z", dist.Normal(torch.tensor([1.0, -1.0]), torch.tensor([0.5, 2.0])).to_event(1))

    flow = pyroflows.iaf(2, num_transforms=2, hidden_dims=(16,))

    def guide():
        pyro.module("flow", flow)
        pyro.sample("z", dist.TransformedDistribution(_base(2), flow))

    svi = pyro.infer.SVI(model, guide, pyro.optim.Adam({"lr": 0.02}), pyro.infer.Trace_ELBO(num_particles=16))
    for _ in range(400):
        svi.step()
    with torch.no_grad():
        z = dist.TransformedDistribution(_base(2), flow).sample((4000,))
    assert (z.mean(0) - torch.tensor([1.0, -1.0])).abs().max() < 0.2
    assert (z.std(0) - torch.tensor([0.5, 2.0])).abs().max() < 0.25


@pytest.mark.parametrize("name", TOY_2D)
def test_toy_data_is_seeded_and_shaped(name):
    a, b = toy_2d(name, 1001, seed=3), toy_2d(name, 1001, seed=3)
    assert a.shape == (1001, 2) and torch.equal(a, b)
    assert not torch.equal(a, toy_2d(name, 1001, seed=4))
    assert a.abs().max() < 6


def test_toy_data_rejects_bad_arguments():
    with pytest.raises(ValueError, match="unknown toy density 'swiss'"):
        toy_2d("swiss", 10)
    with pytest.raises(ValueError, match="n must be a positive int"):
        toy_2d("moons", 0)


def test_nsf_coupling_options():
    flow = pyroflows.nsf(4, num_transforms=2, transform_copied=True)
    assert all(isinstance(layer, pyroflows.transforms.Inverse) for layer in flow.parts)
    assert all(layer.layer.copied_params is not None for layer in flow.parts)
    flow = pyroflows.nsf(4, num_transforms=2, spline_direction="base_to_data")
    assert all(isinstance(layer, pyroflows.transforms.SplineCoupling) for layer in flow.parts)
    with pytest.raises(ValueError, match="coupling variant only"):
        pyroflows.nsf(4, variant="autoregressive", transform_copied=True)
    with pytest.raises(ValueError, match="coupling variant only"):
        pyroflows.nsf(4, variant="autoregressive", spline_direction="data_to_base")
    with pytest.raises(ValueError, match="spline_direction must be one of"):
        pyroflows.nsf(4, spline_direction="forward")


def test_nsf_base_to_data_learns_a_correlated_gaussian():
    test_factory_learns_a_correlated_gaussian(functools.partial(pyroflows.nsf, spline_direction="base_to_data"))


def test_latent_flow_works_without_data_in_any_dimension():
    from pyroflows.flows import latent_flow

    x = torch.randn(1, 3)  # one draw: no batch to initialise ActNorm from
    flow = latent_flow("nice", 3)
    torch.testing.assert_close(flow(x), x)  # ActNorm starts at the identity
    one_d = latent_flow("realnvp", 1)
    assert len(one_d) == 1 and type(one_d[0]).__name__ == "Spline"
    with pytest.raises(ValueError, match="flow must be one of"):
        latent_flow("glow", 3)
