"""The fused spline kernel's hand-written backward against finite differences."""

from __future__ import annotations

import pytest
import torch

from pyroflows.transforms.rqs_kernel import RQSpline
from pyroflows.transforms.univariate import RationalQuadraticSpline


@pytest.mark.parametrize("inverse", [False, True], ids=["forward", "inverse"])
@pytest.mark.parametrize("mins", [(1e-3, 1e-3), (1e-2, 1e-3)], ids=["equal_mins", "unequal_mins"])
def test_gradcheck(inverse, mins):
    torch.manual_seed(0)
    spline = RationalQuadraticSpline(5, 3.0, min_bin_width=mins[0], min_bin_height=mins[1])
    value = (torch.randn(9, 2, dtype=torch.float64) * 2.5).requires_grad_()  # some outside [-3, 3]
    params = torch.randn(9, 2, spline.num_params, dtype=torch.float64, requires_grad=True)
    assert (value.abs() > 3).any() and (value.abs() < 3).any()
    assert torch.autograd.gradcheck(lambda v, p: RQSpline.apply(v, p, spline.config, inverse), (value, params))


def test_forward_and_inverse_agree_with_plain_autograd_formula():
    torch.manual_seed(1)
    spline = RationalQuadraticSpline(6, 2.0)
    x = torch.randn(50, dtype=torch.float64)
    params = torch.randn(50, spline.num_params, dtype=torch.float64)
    y, log_det = spline.forward(x, params)
    x_back, log_det_back = spline.inverse(y, params)
    torch.testing.assert_close(x_back, x, atol=1e-10, rtol=0)
    torch.testing.assert_close(log_det_back, log_det, atol=1e-8, rtol=0)
    slope = torch.autograd.functional.jacobian(lambda v: spline.forward(v, params)[0], x).diagonal()
    torch.testing.assert_close(slope.log(), log_det, atol=1e-8, rtol=0)


@pytest.mark.parametrize("layout", ["params_first", "expanded", "scalar"])
def test_any_parameter_layout_gives_the_same_map(layout):
    """The kernel reads elements in the parameters' memory order; results and
    gradients must not depend on that order."""
    torch.manual_seed(2)
    spline = RationalQuadraticSpline(4, 3.0)
    p = spline.num_params
    if layout == "scalar":
        value, params = torch.tensor(1.3, dtype=torch.float64), torch.randn(p, dtype=torch.float64)
        other = params.clone()
    elif layout == "expanded":
        value, params = torch.randn(6, 3, dtype=torch.float64), torch.randn(3, p, dtype=torch.float64)
        other = params.clone()
        params = params.expand(6, 3, p)
    else:
        value = torch.randn(2, 5, 3, dtype=torch.float64)
        other = torch.randn(2, 5, 3, p, dtype=torch.float64)
        params = other.permute(3, 2, 0, 1).contiguous().permute(2, 3, 1, 0)  # same values, params first
        assert not params.is_contiguous()
    value, params, other = (t.detach().requires_grad_() for t in (value, params, other))
    weights = torch.randn(2, *value.shape, dtype=torch.float64)
    results, grads = [], []
    for ps in (params, other.expand_as(params) if layout == "expanded" else other):
        out, log_det = RQSpline.apply(value, ps, spline.config, False)
        results.append((out, log_det))
        grads.append(torch.autograd.grad((weights[0] * out + weights[1] * log_det).sum(), [value, ps]))
    for a, b in zip(results[0] + grads[0], results[1] + grads[1], strict=True):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, atol=1e-12, rtol=0)


@pytest.mark.parametrize("inverse", [False, True], ids=["forward", "inverse"])
def test_large_batches_match_small_ones(inverse):
    """From 8192 elements on the kernel sums bins by planes; chunks below it
    use torch.cumsum. Both must agree."""
    torch.manual_seed(3)
    spline = RationalQuadraticSpline(6, 3.0, min_bin_width=1e-2, min_bin_height=1e-3)
    value = (2 * torch.randn(8292, 1, dtype=torch.float64)).requires_grad_()
    params = torch.randn(8292, 1, spline.num_params, dtype=torch.float64, requires_grad=True)
    weights = torch.randn(2, *value.shape, dtype=torch.float64)

    def run(v, p, w):
        out, log_det = RQSpline.apply(v, p, spline.config, inverse)
        return (out, log_det, *torch.autograd.grad((w[0] * out + w[1] * log_det).sum(), [v, p]))

    whole = run(value, params, weights)
    pieces = zip(value.split(1000), params.split(1000), weights.split(1000, dim=1), strict=True)
    chunks = [run(v, p, w) for v, p, w in pieces]
    for k, part in enumerate(zip(*chunks, strict=True)):
        torch.testing.assert_close(whole[k], torch.cat(part), atol=1e-12, rtol=0)
