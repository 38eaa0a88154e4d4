"""Autoregressive layers: IAF and MAF with affine or spline maps.

One kernel, `Autoregressive`, applies an elementwise map whose
parameters come from a MADE over the map's *input*:

$$
g(u)_i = \\tau\\big(u_i;\\, \\theta_i(u_{<i}, c)\\big), \\qquad
\\log|\\det J_g| = \\sum_i \\log \\tau'(u_i)
$$

``g`` costs one MADE pass; ``g^{-1}`` costs ``D`` passes. IAF (Kingma et al.,
arXiv:1606.04934) uses ``g`` as the forward (base -> data) map: sampling is
cheap, density of outside data is not. MAF (Papamakarios et al.,
arXiv:1705.07057) uses ``g`` as the inverse (data -> base): density is cheap,
sampling takes ``D`` passes. A MAF layer is exactly the inverse of an IAF
layer with the same parameters.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from pyroflows.nn.made import MADE
from pyroflows.transforms.base import ConditionalFlowTransform, FlowTransform
from pyroflows.transforms.univariate import RationalQuadraticSpline, ScaleShift, UnivariateMap

_MODES = ("iaf", "maf")


class Autoregressive(FlowTransform):
    """Generic autoregressive layer.

    Args:
        input_dim: ``D``.
        univariate: the elementwise map ``tau``.
        mode: ``"iaf"`` (forward cheap) or ``"maf"`` (inverse cheap).
        hidden_dims: MADE widths.
        context_dim: optional context size.
        num_residual_blocks: use a residual MADE with this many blocks.
        order: autoregressive order of the elements (default natural).
    """

    def __init__(
        self,
        input_dim: int,
        univariate: UnivariateMap,
        mode: str = "maf",
        hidden_dims: Sequence[int] = (64, 64),
        context_dim: int | None = None,
        num_residual_blocks: int = 0,
        order: Sequence[int] | None = None,
    ) -> None:
        super().__init__((input_dim,), context_dim)
        if mode not in _MODES:
            raise ValueError(f"mode must be one of {_MODES}, got {mode!r}")
        self.mode = mode
        self.univariate = univariate
        self.made = MADE(
            input_dim, univariate.num_params, hidden_dims, context_dim, num_residual_blocks, order,
            params_major=univariate.params_major,
        )  # fmt: skip

    def _cheap(self, u, context):
        """``g(u)`` and its log-det: one MADE pass."""
        out, log_det = self.univariate.forward(u, self.made(u, context))
        return out, log_det.sum(-1)

    def _sequential(self, v, context):
        """``g^{-1}(v)`` and the log-det of ``g`` there: ``D`` MADE passes.

        After pass ``k`` the first ``k`` elements in autoregressive order are
        exact; the last pass sees every element but the last, which no
        parameter depends on, so its parameters are exact for all.
        """
        u = torch.zeros_like(v)
        if self.context_dim is not None:
            u = u.expand(*torch.broadcast_shapes(v.shape[:-1], context.shape[:-1]), v.shape[-1])
        for _ in range(self.event_shape[0]):
            u, log_det = self.univariate.inverse(v, self.made(u, context))
        return u, log_det.sum(-1)

    def _forward_and_log_det(self, x, context):
        if self.mode == "iaf":
            return self._cheap(x, context)
        y, log_det = self._sequential(x, context)
        return y, -log_det

    def _inverse_and_log_det(self, y, context):
        if self.mode == "iaf":
            return self._sequential(y, context)
        x, log_det = self._cheap(y, context)
        return x, -log_det

    def extra_repr(self) -> str:
        return super().extra_repr() + f", mode={self.mode!r}"


class AffineAutoregressive(Autoregressive):
    """Affine autoregressive layer, $\\tau(u) = u e^{s} + t$.

    ``mode="iaf"``: forward (sampling) is one MADE pass, inverse ``D`` passes.
    ``mode="maf"`` (default): the inverse (density) is one pass, forward ``D``.
    Identity at initialisation.

    Examples:
        >>> maf = AffineAutoregressive(3, mode="maf")
        >>> x, log_det = maf.inverse_and_log_det(torch.randn(5, 3))
        >>> log_det.shape
        torch.Size([5])
    """

    def __init__(
        self,
        input_dim: int,
        mode: str = "maf",
        hidden_dims=(64, 64),
        context_dim: int | None = None,
        num_residual_blocks: int = 0,
        order=None,
        max_log_scale: float | None = 5.0,
    ) -> None:
        super().__init__(
            input_dim, ScaleShift(max_log_scale), mode, hidden_dims, context_dim, num_residual_blocks, order
        )


class SplineAutoregressive(Autoregressive):
    """Rational-quadratic spline autoregressive layer (NSF-AR, arXiv:1906.04032).

    Costs as `AffineAutoregressive` for the same ``mode``. Identity at
    initialisation.

    Examples:
        >>> nsf = SplineAutoregressive(3, count_bins=4)
        >>> nsf(torch.zeros(3)).shape
        torch.Size([3])
    """

    def __init__(
        self,
        input_dim: int,
        mode: str = "maf",
        hidden_dims=(64, 64),
        context_dim: int | None = None,
        num_residual_blocks: int = 0,
        order=None,
        count_bins: int = 8,
        bound: float = 5.0,
        **spline_options,
    ) -> None:
        spline = RationalQuadraticSpline(count_bins, bound, **spline_options)
        super().__init__(input_dim, spline, mode, hidden_dims, context_dim, num_residual_blocks, order)


class ConditionalAffineAutoregressive(ConditionalFlowTransform):
    """`AffineAutoregressive` whose MADE also reads a context."""

    def __init__(self, input_dim: int, context_dim: int, **options) -> None:
        super().__init__(AffineAutoregressive(input_dim, context_dim=context_dim, **options))


class ConditionalSplineAutoregressive(ConditionalFlowTransform):
    """`SplineAutoregressive` whose MADE also reads a context."""

    def __init__(self, input_dim: int, context_dim: int, **options) -> None:
        super().__init__(SplineAutoregressive(input_dim, context_dim=context_dim, **options))
