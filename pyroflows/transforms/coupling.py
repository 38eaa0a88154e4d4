"""Coupling layers: NICE (additive), RealNVP (affine) and spline couplings.

Elements marked by a binary mask pass through unchanged and feed a conditioner
that parametrises an elementwise map of the others (Dinh et al.,
arXiv:1410.8516 and arXiv:1605.08803; Durkan et al., arXiv:1906.04032):

$$
y_A = x_A, \\qquad y_B = \\tau(x_B;\\, \\theta(x_A, c)), \\qquad
\\log|\\det J| = \\sum_{i \\in B} \\log \\tau'(x_i)
$$

Both directions cost one conditioner pass.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from pyroflows.nn.dense import DenseNN
from pyroflows.transforms.base import ConditionalFlowTransform, FlowTransform
from pyroflows.transforms.masks import resolve_mask
from pyroflows.transforms.univariate import RationalQuadraticSpline, ScaleShift, Shift, UnivariateMap


class Coupling(FlowTransform):
    """Generic coupling layer: a mask, a conditioner and a univariate map.

    Args:
        input_dim: size ``D`` of the input vector.
        univariate: the elementwise map applied to transformed elements.
        mask: ``"alternating"``, ``"half"`` or a bool tensor of shape ``(D,)``;
            ``True`` marks copied (conditioning) elements.
        parity: 0 or 1; flips a named mask so stacked layers alternate.
        hidden_dims: conditioner widths.
        context_dim: optional context size.
        conditioner: replaces the default `DenseNN`; maps
            ``(x_A, context)`` to parameters of shape ``(*, |B|, P)``.
        transform_copied: also pass the copied elements through an
            unconditional map of the same kind with free parameters (zero, the
            identity, at initialisation): ``y_A = tau(x_A; phi)``, and the
            conditioner reads ``y_A``. Every element then moves in every layer.
    """

    def __init__(
        self,
        input_dim: int,
        univariate: UnivariateMap,
        mask: str | torch.Tensor = "alternating",
        parity: int = 0,
        hidden_dims: Sequence[int] = (64, 64),
        context_dim: int | None = None,
        conditioner: nn.Module | None = None,
        transform_copied: bool = False,
    ) -> None:
        super().__init__((input_dim,), context_dim)
        mask_t = resolve_mask(mask, input_dim, parity)
        self.univariate = univariate
        self.register_buffer("mask", mask_t)
        self.register_buffer("copied", torch.nonzero(mask_t).flatten())
        self.register_buffer("transformed", torch.nonzero(~mask_t).flatten())
        self.conditioner = conditioner or DenseNN(
            len(self.copied),
            (len(self.transformed), univariate.num_params),
            hidden_dims,
            context_dim,
            params_major=univariate.params_major,
        )
        copied_params = torch.zeros(len(self.copied), univariate.num_params) if transform_copied else None
        self.copied_params = None if copied_params is None else nn.Parameter(copied_params)
        self.register_buffer("order", torch.cat([self.transformed, self.copied]), persistent=False)

    def _couple(self, value, context, inverse):
        moves_copied = self.copied_params is not None
        if moves_copied and not inverse:  # the conditioner reads y_A
            value, log_det_copied = self._elementwise(value, self.copied_params, self.copied, inverse)
        params = self.conditioner(value.index_select(-1, self.copied), context)
        if moves_copied and inverse:  # both halves in one call
            return self._elementwise(value, _append_units(params, self.copied_params), self.order, inverse)
        y, log_det = self._elementwise(value, params, self.transformed, inverse)
        return (y, log_det_copied + log_det) if moves_copied else (y, log_det)

    def _elementwise(self, value, params, index, inverse):
        """The univariate map on ``value[..., index]`` with ``params`` ``(*, len(index), P)``."""
        part = value.index_select(-1, index)
        out, log_det = (self.univariate.inverse if inverse else self.univariate.forward)(part, params)
        full = value.expand(*out.shape[:-1], value.shape[-1]).index_copy(-1, index, out)
        return full, log_det.sum(-1)

    def _forward_and_log_det(self, x, context):
        return self._couple(x, context, inverse=False)

    def _inverse_and_log_det(self, y, context):
        return self._couple(y, context, inverse=True)


def _append_units(params: torch.Tensor, free: torch.Tensor) -> torch.Tensor:
    """``(*, U, P)`` conditioner output and ``(V, P)`` free parameters as
    ``(*, U + V, P)``, in the memory layout of ``params`` (usual or parameter-major)."""
    free = free.expand(*params.shape[:-2], *free.shape)
    if params.stride(-1) == 1:
        return torch.cat([params, free], -2)
    batch = params.dim() - 2
    to_major = (batch + 1, batch, *range(batch))
    back = (*range(2, batch + 2), 1, 0)
    return torch.cat([params.permute(to_major), free.permute(to_major)], 1).permute(back)


class AdditiveCoupling(Coupling):
    """NICE additive coupling, $y_B = x_B + t(x_A)$, log-det 0.

    Both directions cost one conditioner pass; identity at initialisation.

    Examples:
        >>> layer = AdditiveCoupling(4)
        >>> layer(torch.zeros(2, 4)).shape
        torch.Size([2, 4])
    """

    def __init__(
        self,
        input_dim: int,
        mask="alternating",
        parity: int = 0,
        hidden_dims=(64, 64),
        context_dim: int | None = None,
        conditioner: nn.Module | None = None,
    ) -> None:
        super().__init__(input_dim, Shift(), mask, parity, hidden_dims, context_dim, conditioner)


class AffineCoupling(Coupling):
    """RealNVP affine coupling, $y_B = x_B e^{s(x_A)} + t(x_A)$,
    $\\log|\\det J| = \\sum_B s$.

    ``s`` is soft-clamped to ``(-max_log_scale, max_log_scale)`` with ``tanh``
    (``None`` disables it). Both directions cost one conditioner pass;
    identity at initialisation.

    Examples:
        >>> layer = AffineCoupling(4, mask="half")
        >>> y, log_det = layer.forward_and_log_det(torch.randn(3, 4))
        >>> log_det.shape
        torch.Size([3])
    """

    def __init__(
        self,
        input_dim: int,
        mask="alternating",
        parity: int = 0,
        hidden_dims=(64, 64),
        context_dim: int | None = None,
        conditioner: nn.Module | None = None,
        max_log_scale: float | None = 5.0,
    ) -> None:
        super().__init__(input_dim, ScaleShift(max_log_scale), mask, parity, hidden_dims, context_dim, conditioner)


class SplineCoupling(Coupling):
    """Rational-quadratic spline coupling (NSF, arXiv:1906.04032).

    Transformed elements go through a monotone spline on ``[-bound, bound]``
    with identity tails. Both directions cost one conditioner pass; identity
    at initialisation. With ``transform_copied=True`` the copied elements also
    go through splines of their own, free parameters (normflows' NSF layer does
    the same): in 2-D every layer then moves both coordinates. The inverse
    runs both halves in one spline call, the forward two.

    Examples:
        >>> layer = SplineCoupling(4, count_bins=8, bound=5.0)
        >>> layer.inv(layer(torch.ones(4))).shape
        torch.Size([4])
    """

    def __init__(
        self,
        input_dim: int,
        mask="alternating",
        parity: int = 0,
        hidden_dims=(64, 64),
        context_dim: int | None = None,
        conditioner: nn.Module | None = None,
        count_bins: int = 8,
        bound: float = 5.0,
        transform_copied: bool = False,
        **spline_options,
    ) -> None:
        spline = RationalQuadraticSpline(count_bins, bound, **spline_options)
        super().__init__(input_dim, spline, mask, parity, hidden_dims, context_dim, conditioner, transform_copied)


class ConditionalAdditiveCoupling(ConditionalFlowTransform):
    """`AdditiveCoupling` whose conditioner also reads a context."""

    def __init__(self, input_dim: int, context_dim: int, **options) -> None:
        super().__init__(AdditiveCoupling(input_dim, context_dim=context_dim, **options))


class ConditionalAffineCoupling(ConditionalFlowTransform):
    """`AffineCoupling` whose conditioner also reads a context."""

    def __init__(self, input_dim: int, context_dim: int, **options) -> None:
        super().__init__(AffineCoupling(input_dim, context_dim=context_dim, **options))


class ConditionalSplineCoupling(ConditionalFlowTransform):
    """`SplineCoupling` whose conditioner also reads a context."""

    def __init__(self, input_dim: int, context_dim: int, **options) -> None:
        super().__init__(SplineCoupling(input_dim, context_dim=context_dim, **options))
