"""Bijective preprocessing whose log-determinant is counted in the likelihood."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch.distributions import constraints

from pyroflows.transforms.base import FlowTransform

__all__ = ["Logit"]


class Logit(FlowTransform):
    """The logit preprocessing of RealNVP (arXiv:1605.08803, sec. 4.1) as a bijection.

    Data ``u`` in ``(0, 1)`` map to $x = \\mathrm{logit}(\\alpha + (1 - 2\\alpha) u)$
    (the inverse, data -> base); the forward is
    $u = (\\sigma(x) - \\alpha) / (1 - 2\\alpha)$ with

    $$
    \\log|\\det \\partial u / \\partial x| = \\sum_i \\log\\sigma(x_i) + \\log\\sigma(-x_i) - \\log(1 - 2\\alpha)
    $$

    so a likelihood computed through it is the likelihood of ``u``.
    ``alpha`` keeps the logit away from the infinities at 0 and 1: the
    codomain is the open interval $(-\alpha, 1 - \alpha) / (1 - 2\alpha)$,
    which holds ``[0, 1]`` when ``alpha > 0``. Both directions are cheap;
    data outside the codomain raise ``ValueError``.

    Args:
        event_shape: ``(D,)`` or ``(C, H, W)``.
        alpha: in ``[0, 0.5)``.

    Examples:
        >>> layer = Logit((1, 2, 2), alpha=0.05)
        >>> x, log_det = layer.inverse_and_log_det(torch.full((1, 2, 2), 0.5))
        >>> x.abs().max().item(), round(log_det.item(), 4)
        (0.0, -5.1237)
    """

    def __init__(self, event_shape: tuple[int, ...], alpha: float = 0.05) -> None:
        super().__init__(tuple(event_shape))
        if not 0 <= alpha < 0.5:
            raise ValueError(f"alpha must be in [0, 0.5), got {alpha}")
        self.alpha = alpha
        self.low, self.high = -alpha / (1 - 2 * alpha), (1 - alpha) / (1 - 2 * alpha)
        interval = constraints.interval(self.low, self.high)
        self.codomain = constraints.independent(interval, len(self.event_shape))

    def _log_det(self, x):
        terms = F.logsigmoid(x) + F.logsigmoid(-x) - math.log1p(-2 * self.alpha)
        return terms.flatten(x.dim() - len(self.event_shape)).sum(-1)

    def _forward_and_log_det(self, x, context):
        return (torch.sigmoid(x) - self.alpha) / (1 - 2 * self.alpha), self._log_det(x)

    def _inverse_and_log_det(self, y, context):
        x = torch.logit(self.alpha + (1 - 2 * self.alpha) * y)
        return x, self._log_det(x)

    def _validate(self, value, context, name):
        super()._validate(value, context, name)
        if name == "y" and ((value <= self.low) | (value >= self.high)).any():
            low, high = value.min().item(), value.max().item()
            raise ValueError(
                f"Logit(alpha={self.alpha}) takes data in ({self.low:.4g}, {self.high:.4g}), "
                f"got values in [{low:.4g}, {high:.4g}]"
            )
