"""Residual flows: ``y = x + g(x)`` with Lip(g) < 1 (i-ResNet, arXiv:1811.00995;
Residual Flows, arXiv:1906.02735)."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch

from pyroflows.nn.lipschitz import LipschitzConvNet, LipschitzMLP
from pyroflows.transforms.base import ConditionalFlowTransform, FlowTransform
from pyroflows.transforms.logdet import LogDetEstimator, network_jacobian

__all__ = ["ConditionalResidual", "ConvResidual", "Residual", "ResidualNotConverged"]


class ResidualNotConverged(RuntimeError):
    """The fixed-point iteration of a residual block did not reach its tolerance."""


class Residual(FlowTransform):
    """Invertible residual block, written data -> base as in the papers:
    $x = y + g(y)$ with $\\mathrm{Lip}(g) \\le c < 1$, so
    $\\log|\\det \\partial x / \\partial y| = \\log\\det(I + J_g(y))$.

    The *inverse* (data -> base, density evaluation) is one network pass;
    the forward (sampling) solves $y + g(y) = x$ by the fixed-point
    iteration $y \\leftarrow x - g(y)$, which converges geometrically at
    rate ``c``, to ``atol`` (or the dtype's resolution) within ``max_iterations`` (else
    `ResidualNotConverged`, or a warning with ``on_failure="warn"``).
    The log-det estimator is an explicit option (`LogDetEstimator`):
    exact, truncated series or unbiased Russian roulette with Hutchinson
    traces and the memory-flat Neumann gradient. Identity at initialisation.

    Examples:
        >>> layer = Residual(2, log_det=LogDetEstimator("exact"))
        >>> layer(torch.ones(2)).tolist()
        [1.0, 1.0]
    """

    def __init__(
        self,
        input_dim: int,
        hidden_dims: Sequence[int] = (64, 64),
        context_dim: int | None = None,
        coeff: float = 0.97,
        log_det: LogDetEstimator | None = None,
        atol: float = 1e-6,
        max_iterations: int = 200,
        on_failure: str = "raise",
    ) -> None:
        super().__init__((input_dim,), context_dim)
        self._configure(coeff, log_det, atol, max_iterations, on_failure)
        self.net = LipschitzMLP(input_dim, hidden_dims, coeff, context_dim)

    def _configure(self, coeff, log_det, atol, max_iterations, on_failure) -> None:
        if not 0 < coeff < 1:
            raise ValueError(f"coeff must be in (0, 1) for the block to be invertible, got {coeff}")
        if on_failure not in ("raise", "warn"):
            raise ValueError(f"on_failure must be 'raise' or 'warn', got {on_failure!r}")
        self.estimator = log_det or LogDetEstimator()
        self.atol, self.max_iterations, self.on_failure = atol, max_iterations, on_failure

    def _g(self, context):
        return lambda v: self.net(v, context)

    def _inverse_and_log_det(self, y, context):
        gy, log_det = self.estimator(self.net, y, context, len(self.event_shape))
        return y.expand_as(gy) + gy, -log_det

    def _forward_and_log_det(self, x, context):
        g = self._g(context)
        if context is not None:  # broadcast with the context's batch shape
            x = x.expand(*torch.broadcast_shapes(x.shape[:-1], context.shape[:-1]), x.shape[-1])
        with torch.no_grad():
            y = x.detach().clone()
            # no tighter than the dtype allows
            atol = max(self.atol, 8 * torch.finfo(x.dtype).eps * max(1.0, x.abs().max().item()))
            for _ in range(self.max_iterations):
                new = x.detach() - g(y)
                error = (new - y).abs().max()
                y = new
                if error <= atol:
                    break
            else:
                message = f"residual fixed point not converged in {self.max_iterations} iterations (error {error:.3g})"
                if self.on_failure == "raise":
                    raise ResidualNotConverged(message + "; raise max_iterations or atol, or lower coeff")
                warnings.warn(message, stacklevel=3)
        y = self._implicit(x, y, context)
        _, log_det = self.estimator(self.net, y, context, len(self.event_shape))
        return y, -log_det

    def _implicit(self, x: torch.Tensor, y_star: torch.Tensor, context) -> torch.Tensor:
        """``y_star`` with the exact implicit gradient: ``dy = (I + J_g)^{-1} (dx - dg)``.

        One step ``x - g(y_star)`` carries the graph to ``x`` and the weights; a
        hook maps its incoming gradient ``a`` to ``b = (I + J_g^T)^{-1} a``,
        solved by the fixed point ``b = a - J_g^T b`` (converges: Lip(g) < 1).
        """
        if not torch.is_grad_enabled():
            return x - self.net(y_star, context)
        g_star, jacobian = network_jacobian(self.net, y_star, context)  # one pass: the step and the hook's J
        core = x - g_star
        if not core.requires_grad:
            return core

        def solve(grad):
            b = grad
            for _ in range(self.max_iterations):
                with torch.no_grad():
                    jtb = jacobian.vjp(b)
                new = grad - jtb
                done = (new - b).abs().max() <= self.atol
                b = new
                if done:
                    break
            return b

        core.register_hook(solve)
        return core.view_as(core)  # a node below the hook: gradients taken at y skip it


class ConvResidual(Residual):
    """`Residual` for images ``(*, C, H, W)``: ``g`` is a
    `LipschitzConvNet` (spectrally normalised 3x3, 1x1,
    3x3 convolutions with LipSwish; Residual Flows, arXiv:1906.02735), so
    $\\mathrm{Lip}(g) \\le c < 1$ on images of ``input_shape``. The same
    inverse, estimators and options as `Residual`; ``"exact"`` builds the
    ``(CHW) x (CHW)`` Jacobian (small images only). Identity at initialisation.

    Examples:
        >>> layer = ConvResidual((2, 4, 4), hidden_channels=8)
        >>> x = torch.randn(3, 2, 4, 4)
        >>> bool((layer(x) == x).all())
        True
    """

    def __init__(
        self,
        input_shape: tuple[int, int, int],
        hidden_channels: int = 64,
        coeff: float = 0.97,
        log_det: LogDetEstimator | None = None,
        atol: float = 1e-6,
        max_iterations: int = 200,
        on_failure: str = "raise",
    ) -> None:
        if len(input_shape) != 3:
            raise ValueError(f"ConvResidual takes an image shape (C, H, W), got {input_shape!r}")
        FlowTransform.__init__(self, tuple(input_shape))
        self._configure(coeff, log_det, atol, max_iterations, on_failure)
        self.net = LipschitzConvNet(tuple(input_shape), hidden_channels, coeff)


class ConditionalResidual(ConditionalFlowTransform):
    """`Residual` with a context fed to its network; ``condition(c)`` binds it."""

    def __init__(self, input_dim: int, context_dim: int, **options) -> None:
        super().__init__(Residual(input_dim, context_dim=context_dim, **options))
