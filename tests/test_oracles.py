"""Our spline and affine coupling equal Pyro's on shared parameters."""

from __future__ import annotations

import pyro.distributions.transforms as pyro_t
import torch
from pyro.nn import DenseNN

from pyroflows.transforms import AffineCoupling, Spline


def test_spline_matches_pyro_quadratic_spline():
    torch.manual_seed(0)
    ours = Spline(4, count_bins=6, bound=3.0).double()
    theirs = pyro_t.Spline(4, count_bins=6, bound=3.0, order="quadratic").double()
    with torch.no_grad():
        ours.params.normal_()
        k = 6
        theirs.unnormalized_widths.copy_(ours.params[:, :k])
        theirs.unnormalized_heights.copy_(ours.params[:, k : 2 * k])
        theirs.unnormalized_derivatives.copy_(ours.params[:, 2 * k :] + ours.univariate.derivative_offset)
    x = torch.randn(400, 4, dtype=torch.float64) * 2.5  # inside and outside the box
    y, _ = ours.forward_and_log_det(x)
    y_pyro = theirs(x)
    # Pyro pins the boundary derivatives at 1 - min_derivative (a known quirk);
    # ours pins them at 1 so the identity tails join smoothly. Knots and all
    # interior derivatives agree, so away from the two edge bins the maps match.
    knots_x, _, _ = ours.univariate.knots(ours.params)
    edge = (x < knots_x[:, 1]) | (x > knots_x[:, -2])
    edge &= x.abs() <= 3.0
    assert (~edge).sum() > 1000 and edge.sum() > 50
    torch.testing.assert_close(y[~edge], y_pyro[~edge], atol=1e-10, rtol=0)
    assert (y[edge] - y_pyro[edge]).abs().max() < 5e-3
    pyro_log_det = theirs.log_abs_det_jacobian(x, y_pyro)
    torch.testing.assert_close(
        torch.where(edge, 0.0, ours.univariate.forward(x, ours.params.expand(400, 4, -1))[1]),
        torch.where(edge, 0.0, pyro_log_det),
        atol=1e-8,
        rtol=0,
    )
    inside = ~edge
    torch.testing.assert_close(ours.inverse_and_log_det(y)[0][inside], theirs.inv(y)[inside], atol=1e-8, rtol=0)


class _PyroLayout(torch.nn.Module):
    """Present Pyro's (mean, log_scale) hypernet output in our (shift, log_scale) layout."""

    def __init__(self, hypernet):
        super().__init__()
        self.hypernet = hypernet

    def forward(self, x_a, context=None):
        mean, log_scale = self.hypernet(x_a)
        return torch.stack([mean, log_scale], dim=-1)


def test_affine_coupling_matches_pyro():
    torch.manual_seed(1)
    dim, split = 5, 2
    hypernet = DenseNN(split, [16, 16], [dim - split, dim - split]).double()
    theirs = pyro_t.AffineCoupling(split, hypernet).double()
    mask = torch.arange(dim) < split
    ours = AffineCoupling(dim, mask=mask, conditioner=_PyroLayout(hypernet), max_log_scale=None).double()
    x = torch.randn(100, dim, dtype=torch.float64)
    y, log_det = ours.forward_and_log_det(x)
    torch.testing.assert_close(y, theirs(x), atol=1e-12, rtol=0)
    torch.testing.assert_close(log_det, theirs.log_abs_det_jacobian(x, y), atol=1e-12, rtol=0)
    torch.testing.assert_close(ours.inverse_and_log_det(y)[0], theirs.inv(y), atol=1e-10, rtol=0)
