"""Elementwise monotone maps driven by per-element parameters.

Couplings and autoregressive layers are thin configurations of one generic
layer; what differs is the univariate map applied to each transformed element.
A map takes inputs of shape ``(*, n)`` and parameters of shape ``(*, n, P)``
and returns outputs and the elementwise forward log-derivative. All-zero
parameters give the identity.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from pyroflows.transforms.rqs_kernel import RQSpline, SplineConfig, knot_table


class UnivariateMap:
    """Interface: ``num_params`` per element, ``forward`` and ``inverse``.
    ``params_major`` asks conditioners for parameter-first memory."""

    num_params: int
    params_major = False

    def forward(self, x: torch.Tensor, params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def inverse(self, y: torch.Tensor, params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``x`` and the *forward* elementwise log-derivative at ``x``."""
        raise NotImplementedError


class Shift(UnivariateMap):
    """``y = x + t`` (NICE's additive coupling). Volume preserving."""

    num_params = 1

    def forward(self, x, params):
        return x + params[..., 0], torch.zeros_like(x)

    def inverse(self, y, params):
        return y - params[..., 0], torch.zeros_like(y)


def soft_clamp(value: torch.Tensor, bound: float | None) -> torch.Tensor:
    """Smoothly squash ``value`` into ``(-bound, bound)``; identity near zero."""
    if bound is None:
        return value
    return bound * torch.tanh(value / bound)


class ScaleShift(UnivariateMap):
    """``y = x * exp(s) + t`` with ``s`` soft-clamped to ``(-max_log_scale, max_log_scale)``.

    Parameters are ordered ``(t, s)``.
    """

    num_params = 2

    def __init__(self, max_log_scale: float | None = 5.0) -> None:
        if max_log_scale is not None and max_log_scale <= 0:
            raise ValueError(f"max_log_scale must be positive or None, got {max_log_scale}")
        self.max_log_scale = max_log_scale

    def forward(self, x, params):
        log_scale = soft_clamp(params[..., 1], self.max_log_scale)
        return x * log_scale.exp() + params[..., 0], log_scale

    def inverse(self, y, params):
        log_scale = soft_clamp(params[..., 1], self.max_log_scale)
        return (y - params[..., 0]) * torch.exp(-log_scale), log_scale


class SigmoidScaleShift(UnivariateMap):
    """Glow's affine map: in the data -> base direction (the inverse)
    ``x = (y - t) * c``, with ``log c = logsigmoid(h + 2) - logsigmoid(2)``
    (so ``c < 1.135``: that direction barely expands), soft-clamped below at
    ``-max_log_scale`` so sampling (``y = x / c + t``) stays finite.
    Parameters are ordered ``(t, h)``; zero gives the identity.
    """

    num_params = 2
    _OFFSET = 2.0
    _LOG_SIGMOID_OFFSET = -math.log1p(math.exp(-_OFFSET))

    def __init__(self, max_log_scale: float = 5.0) -> None:
        if max_log_scale <= 0:
            raise ValueError(f"max_log_scale must be positive, got {max_log_scale}")
        self.max_log_scale = max_log_scale

    def _log_c(self, h):
        return soft_clamp(F.logsigmoid(h + self._OFFSET) - self._LOG_SIGMOID_OFFSET, self.max_log_scale)

    def forward(self, x, params):
        log_c = self._log_c(params[..., 1])
        return x * torch.exp(-log_c) + params[..., 0], -log_c

    def inverse(self, y, params):
        log_c = self._log_c(params[..., 1])
        return (y - params[..., 0]) * log_c.exp(), -log_c


class RationalQuadraticSpline(UnivariateMap):
    """Monotone rational-quadratic spline on ``[-bound, bound]``, identity outside.

    Durkan et al., *Neural Spline Flows*, arXiv:1906.04032. Parameters per
    element are ``count_bins`` unnormalised widths, ``count_bins`` heights and
    ``count_bins - 1`` interior derivatives. Boundary derivatives are 1 so the
    linear (identity) tails join smoothly. Zero parameters give the identity.
    """

    params_major = True

    def __init__(
        self,
        count_bins: int = 8,
        bound: float = 5.0,
        min_bin_width: float = 1e-3,
        min_bin_height: float = 1e-3,
        min_derivative: float = 1e-3,
    ) -> None:
        if count_bins < 1:
            raise ValueError(f"count_bins must be >= 1, got {count_bins}")
        if bound <= 0:
            raise ValueError(f"bound must be positive, got {bound}")
        for name, value in (("min_bin_width", min_bin_width), ("min_bin_height", min_bin_height)):
            if not 0 <= value * count_bins < 1:
                raise ValueError(f"{name} * count_bins must be in [0, 1), got {value * count_bins}")
        if not 0 <= min_derivative < 1:
            raise ValueError(f"min_derivative must be in [0, 1), got {min_derivative}")
        # softplus(0 + offset) + min_derivative == 1: zero parameters give slope 1.
        offset = math.log(math.expm1(1.0 - min_derivative))
        self.config = SplineConfig(count_bins, float(bound), min_bin_width, min_bin_height, min_derivative, offset)
        self.num_params = 3 * count_bins - 1

    @property
    def count_bins(self) -> int:
        return self.config.count_bins

    @property
    def bound(self) -> float:
        return self.config.bound

    @property
    def derivative_offset(self) -> float:
        return self.config.derivative_offset

    def knots(self, params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Knot x-positions, y-positions and derivatives, each ``(*, K+1)``."""
        return knot_table(params, self.config).unbind(-2)

    def forward(self, x, params):
        return self._apply(x, params, inverse=False)

    def inverse(self, y, params):
        return self._apply(y, params, inverse=True)

    def _apply(self, value, params, inverse):
        batch = torch.broadcast_shapes(value.shape, params.shape[:-1])
        value = value.expand(batch)
        params = params.expand(*batch, params.shape[-1])
        return RQSpline.apply(value, params, self.config, inverse)
