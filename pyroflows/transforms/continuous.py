"""Continuous normalizing flows (FFJORD, arXiv:1810.01367; RNODE, arXiv:2002.02798)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import nn
from torchdiffeq import odeint, odeint_adjoint

from pyroflows.nn.odenet import ConcatSquashMLP
from pyroflows.transforms.base import ConditionalFlowTransform, FlowTransform
from pyroflows.validation import check_tolerances

__all__ = ["ConditionalContinuousFlow", "ContinuousFlow", "ODESolution"]


ADAPTIVE_SOLVERS = ("dopri5", "dopri8", "bosh3", "fehlberg2", "adaptive_heun")  # torchdiffeq's, with rtol/atol
FIXED_STEP_SOLVERS = ("euler", "midpoint", "rk4", "heun2", "heun3", "explicit_adams", "implicit_adams")


def _state_norm(state) -> torch.Tensor:
    """Error norm of the sample and the log-det only (torchdiffeq's mixed norm over those two)."""
    return torch.maximum(state[0].pow(2).mean().sqrt(), state[1].pow(2).mean().sqrt())


class _Dynamics(nn.Module):
    """Augmented ODE: ``d/dt [x, log|det|, kinetic, jacobian] = [f, tr(J), |f|^2, |J|_F^2]``."""

    def __init__(self, velocity: nn.Module, trace: str, regularize: bool) -> None:
        super().__init__()
        self.velocity, self.trace, self.regularize = velocity, trace, regularize

    def forward(self, t, state, context: torch.Tensor | None, noise: torch.Tensor):
        x = state[0]
        linear = self.velocity.linearize(x, t, context) if hasattr(self.velocity, "linearize") else None
        if linear is not None:  # traces by matrix products: first-order autograd only
            f, jacobian = linear
            if self.trace == "exact":
                jac = jacobian.matrix(f.dim() - 1)
                div = jac.diagonal(dim1=-2, dim2=-1).sum(-1)
                frob = jac.pow(2).sum((-2, -1))
            else:
                vjp = jacobian.vjp(noise)
                div = (vjp * noise).sum(-1)
                frob = vjp.pow(2).sum(-1)
            return self._augment(f, div, frob)
        with torch.enable_grad():
            x = x if x.requires_grad else x.detach().requires_grad_(True)
            f = self.velocity(x, t, context)
            if self.trace == "exact":
                rows = [torch.autograd.grad(f[..., i].sum(), x, create_graph=True)[0] for i in range(x.shape[-1])]
                jac = torch.stack(rows, -2)
                div = jac.diagonal(dim1=-2, dim2=-1).sum(-1)
                frob = jac.pow(2).sum((-2, -1))
            else:
                (vjp,) = torch.autograd.grad(f, x, noise, create_graph=True)
                div = (vjp * noise).sum(-1)
                frob = vjp.pow(2).sum(-1)
        return self._augment(f, div, frob)

    def _augment(self, f, div, frob) -> tuple[torch.Tensor, ...]:
        return (f, div, f.pow(2).sum(-1), frob) if self.regularize else (f, div)


class _Solve(nn.Module):
    """The dynamics bound to one solve's context and probe noise (passed in,
    never stashed on the shared module), counting its evaluations."""

    def __init__(self, dynamics: _Dynamics, context: torch.Tensor | None, noise: torch.Tensor) -> None:
        super().__init__()
        self.dynamics, self.context, self.noise, self.nfe = dynamics, context, noise, 0

    def forward(self, t, state):
        self.nfe += 1
        return self.dynamics(t, state, self.context, self.noise)


class ODESolution(NamedTuple):
    """What one `ContinuousFlow.solve` measured."""

    value: torch.Tensor
    log_det: torch.Tensor
    nfe: int
    regularization: dict[str, torch.Tensor]


class ContinuousFlow(FlowTransform):
    """FFJORD: ``dx/dt = v(x, t)`` from ``t = 0`` (base) to ``t = 1`` (data),
    $\\log|\\det \\partial x_1 / \\partial x_0| = \\int_0^1 \\mathrm{tr}\\,\\partial v / \\partial x\\, dt$.

    Any velocity module ``v(x, t, context)`` works (flow-matching models reuse
    this transform); the default is a concat-squash MLP that starts at zero,
    so the flow starts at the identity. Both directions cost one ODE solve
    (torchdiffeq ``odeint``, or ``odeint_adjoint`` with ``adjoint=True``).

    Args:
        trace: ``"exact"`` (D autograd passes per evaluation; small D) or
            ``"hutchinson"`` (one vector-Jacobian product, unbiased).
        noise: Hutchinson probe, ``"gaussian"`` or ``"rademacher"``, drawn
            once per solve.
        regularize: also integrate the kinetic energy ``|f|^2`` and the
            Jacobian Frobenius norm (RNODE); read them from
            `last_regularization` after a call and add them to the loss.
        method: torchdiffeq solver (``"dopri5"``, ``"rk4"``, ...).
        rtol: relative tolerance of adaptive solvers.
        atol: absolute tolerance of adaptive solvers.
        step_size: step of fixed-step solvers such as ``"rk4"``.
        adjoint: integrate gradients backwards (``odeint_adjoint``): memory
            flat in the number of steps.

    `solve` returns a solve's end point, log-det, number of velocity
    evaluations and penalties together. Inside a composed flow or a
    distribution, where a transform returns only its output, each solve also
    leaves them in `last_nfe` and `last_regularization`.

    Examples:
        >>> flow = ContinuousFlow(2, hidden_dims=(16,))
        >>> flow(torch.ones(2)).tolist()
        [1.0, 1.0]
    """

    def __init__(
        self,
        input_dim: int,
        hidden_dims: Sequence[int] = (64, 64),
        context_dim: int | None = None,
        velocity: nn.Module | None = None,
        trace: str = "exact",
        noise: str = "gaussian",
        regularize: bool = False,
        method: str = "dopri5",
        rtol: float = 1e-5,
        atol: float = 1e-5,
        step_size: float | None = None,
        adjoint: bool = False,
    ) -> None:
        super().__init__((input_dim,), context_dim)
        if trace not in ("exact", "hutchinson"):
            raise ValueError(f"trace must be 'exact' or 'hutchinson', got {trace!r}")
        if noise not in ("gaussian", "rademacher"):
            raise ValueError(f"noise must be 'gaussian' or 'rademacher', got {noise!r}")
        if method not in (*ADAPTIVE_SOLVERS, *FIXED_STEP_SOLVERS):
            raise ValueError(f"method must be one of {ADAPTIVE_SOLVERS + FIXED_STEP_SOLVERS}, got {method!r}")
        if method in ADAPTIVE_SOLVERS:
            check_tolerances(rtol, atol)
        self.dynamics = _Dynamics(velocity or ConcatSquashMLP(input_dim, hidden_dims, context_dim), trace, regularize)
        self.noise, self.method, self.rtol, self.atol = noise, method, rtol, atol
        self.step_size, self.adjoint = step_size, adjoint
        self.last_nfe = 0
        self.last_regularization: dict[str, torch.Tensor] = {}

    def solve(self, value: torch.Tensor, context: torch.Tensor | None = None, inverse: bool = False) -> ODESolution:
        """One ODE solve, base to data (data to base with ``inverse``), and
        everything it measured: the end point, the log-det of the map it
        took, the number of velocity evaluations and (with ``regularize``) the
        RNODE penalties. No validation: ``value`` is ``(..., input_dim)``."""
        return ODESolution(*self._solve(value, context, *((1.0, 0.0) if inverse else (0.0, 1.0))))

    def _solve(self, value: torch.Tensor, context, t0: float, t1: float):
        dyn = self.dynamics
        if context is not None:
            batch = torch.broadcast_shapes(value.shape[:-1], context.shape[:-1])
            value = value.expand(*batch, value.shape[-1])
        probe = torch.randn_like(value)
        solve = _Solve(dyn, context, probe.sign() if self.noise == "rademacher" else probe)
        zeros = value.new_zeros(value.shape[:-1])
        state = (value, zeros) + ((zeros, zeros) if dyn.regularize else ())
        times = torch.tensor([t0, t1], dtype=value.dtype, device=value.device)
        options = {"step_size": self.step_size} if self.step_size is not None else {}
        if dyn.regularize and self.method in ADAPTIVE_SOLVERS:
            options["norm"] = _state_norm  # penalties need no accuracy: they must not shrink the steps
        if self.adjoint:
            params = tuple(p for p in dyn.parameters() if p.requires_grad)
            out = odeint_adjoint(
                solve,
                state,
                times,
                rtol=self.rtol,
                atol=self.atol,
                method=self.method,
                options=options,
                adjoint_params=params,
            )
        else:
            out = odeint(solve, state, times, rtol=self.rtol, atol=self.atol, method=self.method, options=options)
        final = [o[-1] for o in out]
        penalties = {"kinetic": final[2].abs(), "jacobian_frobenius": final[3].abs()} if dyn.regularize else {}
        self.last_nfe, self.last_regularization = solve.nfe, penalties
        return final[0], final[1], solve.nfe, penalties

    def _forward_and_log_det(self, x, context):
        return tuple(self.solve(x, context)[:2])

    def _inverse_and_log_det(self, y, context):
        x, log_det = self.solve(y, context, inverse=True)[:2]
        return x, -log_det  # the forward map's log-det at x


class ConditionalContinuousFlow(ConditionalFlowTransform):
    """`ContinuousFlow` whose velocity also reads a context."""

    def __init__(self, input_dim: int, context_dim: int, **options) -> None:
        super().__init__(ContinuousFlow(input_dim, context_dim=context_dim, **options))
