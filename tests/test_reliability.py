"""1e6 heavy-tailed float32 inputs through every spline, coupling and
autoregressive layer: nothing non-finite, and accurate inverses in the box."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from pyroflows.testing import _kernel, instantiate

from .cases import CASES

N = 1_000_000
FAMILIES = ("coupling", "autoregressive", "spline")
RELIABILITY_CASES = [c for c in CASES if any(f in c.name for f in FAMILIES)]


def _heavy_tailed(shape, seed):
    gen = torch.Generator().manual_seed(seed)
    # Student-t with df=1 (Cauchy): |x| up to ~1e6 in a million draws.
    return torch.tan(torch.pi * (torch.rand(shape, generator=gen) - 0.5))


def _run(case, perturb):
    module = instantiate(dataclasses.replace(case, perturb=perturb), torch.float32)
    kernel = _kernel(module)
    rows = N // kernel.event_shape.numel()
    x = _heavy_tailed((rows, *kernel.event_shape), 0)
    y_data = _heavy_tailed((rows, *kernel.event_shape), 1)
    context = None if kernel.context_shape is None else _heavy_tailed((rows, *kernel.context_shape), 2)
    with torch.no_grad():
        y, log_det = kernel.forward_and_log_det(x, context)
        x_back, log_det_back = kernel.inverse_and_log_det(y, context)
        x_data, log_det_data = kernel.inverse_and_log_det(y_data, context)
        y_back, _ = kernel.forward_and_log_det(x_data, context)
    return kernel, context, x, y, x_back, y_data, y_back, (log_det, log_det_back, log_det_data)


@pytest.mark.parametrize("case", RELIABILITY_CASES, ids=lambda c: c.name)
def test_heavy_tails_stay_finite(case):
    """With strongly perturbed conditioners (huge inputs make huge parameters)."""
    _, _, x, y, x_back, y_data, y_back, log_dets = _run(case, case.perturb)
    assert x.abs().max() > 1e5
    for name, value in [("y", y), ("x_back", x_back), ("y_back", y_back)] + [
        (f"log_det[{i}]", v) for i, v in enumerate(log_dets)
    ]:
        assert torch.isfinite(value).all(), f"{name} has {int((~torch.isfinite(value)).sum())} non-finite values"


# Rows of an image event (64 values) are never all inside the box under a Cauchy;
# image couplings' float32 inverses are checked by the contract harness instead.
VECTOR_CASES = [c for c in RELIABILITY_CASES if "image" not in c.name]


@pytest.mark.parametrize("case", VECTOR_CASES, ids=lambda c: c.name)
def test_heavy_tails_invert_accurately_inside_the_box(case):
    """With conditioners at a trained-like scale, rows inside [-B, B] invert to float32 accuracy."""
    kernel, context, x, _, x_back, y_data, y_back, (log_det, log_det_back, _) = _run(case, 0.1)
    bound = getattr(getattr(kernel, "univariate", None), "bound", 3.0)
    inside = (x.abs() <= bound).all(-1)
    inside_data = (y_data.abs() <= bound).all(-1)
    if context is not None:
        context_inside = (context.abs() <= bound).all(-1)
        inside, inside_data = inside & context_inside, inside_data & context_inside
    assert inside.sum() > 10_000
    assert (x_back - x)[inside].abs().max() < 1e-4
    assert (y_back - y_data)[inside_data].abs().max() < 1e-4
    assert (log_det_back - log_det)[inside].abs().max() < 1e-4
