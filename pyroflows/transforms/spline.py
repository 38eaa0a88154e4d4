"""Elementwise rational-quadratic spline with free parameters."""

from __future__ import annotations

import torch
from torch import nn

from pyroflows.transforms.base import FlowTransform
from pyroflows.transforms.univariate import RationalQuadraticSpline


class Spline(FlowTransform):
    """Elementwise monotone rational-quadratic spline (arXiv:1906.04032).

    Each element has its own spline on ``[-bound, bound]`` with identity tails:

    $$
    y_i = \\tau_i(x_i), \\qquad \\log|\\det J| = \\sum_i \\log \\tau_i'(x_i)
    $$

    Both directions are cheap (closed form). Identity at initialisation.

    Examples:
        >>> layer = Spline(2, count_bins=4, bound=3.0)
        >>> layer(torch.tensor([0.5, 10.0])).round(decimals=4).tolist()
        [0.5, 10.0]
    """

    def __init__(self, input_dim: int, count_bins: int = 8, bound: float = 5.0, **spline_options) -> None:
        super().__init__((input_dim,))
        self.univariate = RationalQuadraticSpline(count_bins, bound, **spline_options)
        self.params = nn.Parameter(torch.zeros(input_dim, self.univariate.num_params))

    def _forward_and_log_det(self, x, context):
        y, log_det = self.univariate.forward(x, self.params.expand(*x.shape, -1))
        return y, log_det.sum(-1)

    def _inverse_and_log_det(self, y, context):
        x, log_det = self.univariate.inverse(y, self.params.expand(*y.shape, -1))
        return x, log_det.sum(-1)
