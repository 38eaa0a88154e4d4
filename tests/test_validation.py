"""Bad input gets a ValueError naming what was expected and what came."""

from __future__ import annotations

import pyro.distributions as dist
import pytest
import torch

import pyroflows
from pyroflows.transforms import ActNorm, ConditionalSplineCoupling, SplineCoupling


@pytest.fixture
def layer():
    return SplineCoupling(4)


def test_wrong_input_shape_names_expected_and_actual(layer):
    with pytest.raises(ValueError, match=r"x must have shape \(\*batch, 4\), got shape \(2, 3\)"):
        layer(torch.zeros(2, 3))
    with pytest.raises(ValueError, match=r"y must have shape \(\*batch, 4\), got shape \(5,\)"):
        layer.inv(torch.zeros(5))


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_input_is_rejected(layer, bad):
    x = torch.zeros(3, 4)
    x[1, 2] = bad
    with pytest.raises(ValueError, match="x must be finite, got 1 non-finite"):
        layer(x)
    base = dist.Normal(torch.zeros(4), 1.0).to_event(1)
    d = dist.TransformedDistribution(base, layer, validate_args=False)  # our check, not torch's
    with pytest.raises(ValueError, match="y must be finite"):
        d.log_prob(x)


def test_wrong_context_shape_and_missing_context():
    cond = ConditionalSplineCoupling(4, context_dim=2)
    with pytest.raises(ValueError, match=r"context must have shape \(\*batch, 2\), got shape \(3, 5\)"):
        cond.condition(torch.zeros(3, 5))
    with pytest.raises(
        ValueError, match=r"context batch shape \(3,\) does not broadcast with input batch shape \(4,\)"
    ):
        cond.condition(torch.zeros(3, 2))(torch.zeros(4, 4))
    with pytest.raises(
        ValueError,
        match=r"this layer is conditional: call .condition\(context\) with a context of shape \(\*batch, 2\)",
    ):
        cond.kernel(torch.zeros(4, 4))
    with pytest.raises(ValueError, match="takes no context"):
        SplineCoupling(4).forward_and_log_det(torch.zeros(4), torch.zeros(2))


def test_validation_can_be_switched_off(layer):
    pyroflows.set_validation(False)
    try:
        y = layer(torch.full((2, 4), float("nan")))
        assert torch.isnan(y).any()
    finally:
        pyroflows.set_validation(True)
    with pytest.raises(TypeError, match="expects a bool"):
        pyroflows.set_validation("no")


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: SplineCoupling(4, mask=torch.ones(4, dtype=torch.bool)), "at least one element"),
        (lambda: SplineCoupling(4, mask=torch.ones(3, dtype=torch.bool)), r"mask must have shape \(4,\), got \(3,\)"),
        (lambda: SplineCoupling(4, mask="diagonal"), "mask must be 'alternating', 'half'"),
        (lambda: SplineCoupling(4, count_bins=0), "count_bins must be >= 1"),
        (lambda: SplineCoupling(4, bound=-1.0), "bound must be positive"),
        (lambda: pyroflows.nsf(1), "coupling flows need input_dim >= 2"),
        (lambda: pyroflows.maf(3, num_transforms=0), "num_transforms must be a positive int"),
        (lambda: pyroflows.nsf(3, variant="magic"), "variant must be"),
        (lambda: pyroflows.transforms.AffineAutoregressive(3, mode="both"), "mode must be one of"),
        (lambda: pyroflows.transforms.Permute([0, 0, 1]), "permutation must be a permutation"),
    ],
)
def test_bad_construction_arguments(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_actnorm_needs_a_batch_to_initialise():
    with pytest.raises(ValueError, match="at least 2 inputs, got 1"):
        ActNorm(3)(torch.zeros(1, 3))
