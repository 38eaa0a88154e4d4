"""Estimators of ``log det(I + J_g(x))`` for residual blocks with Lip(g) < 1.

``log det(I + J) = sum_k (-1)^(k+1) tr(J^k) / k`` converges when Lip(g) < 1.
Traces come from Hutchinson's estimator ``v^T J^k v`` (vector-Jacobian
products, never the Jacobian) except in ``"exact"`` mode. ``"roulette"`` is
the unbiased Russian-roulette estimator of Residual Flows (arXiv:1906.02735):
a random number of terms, each reweighted by the probability of reaching it.
With ``neumann_gradient`` the gradient comes from the Neumann series of
``tr((I + J)^{-1} dJ)`` through one Jacobian-vector product, so memory stays
flat in the number of terms.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

__all__ = ["LogDetEstimator"]

ESTIMATORS = ("exact", "series", "roulette")


@dataclass
class LogDetEstimator:
    """How a residual block estimates its log-determinant.

    Args:
        method: ``"exact"`` (autograd Jacobian and ``slogdet``: small D only),
            ``"series"`` (first ``num_terms`` terms, biased) or ``"roulette"``
            (unbiased).
        num_terms: terms of the truncated series.
        num_exact_terms: roulette terms always computed before the random ones.
        distribution: roulette term count, ``"geometric"`` (parameter ``p``) or
            ``"poisson"`` (rate ``rate``), shifted to start at 1.
        noise: Hutchinson probe, ``"gaussian"`` or ``"rademacher"``.
        neumann_gradient: memory-flat gradient (series and roulette).
    """

    method: str = "roulette"
    num_terms: int = 10
    num_exact_terms: int = 2
    distribution: str = "geometric"
    p: float = 0.5
    rate: float = 2.0
    noise: str = "gaussian"
    neumann_gradient: bool = True

    def __post_init__(self) -> None:
        if self.method not in ESTIMATORS:
            raise ValueError(f"log-det method must be one of {ESTIMATORS}, got {self.method!r}")
        if self.distribution not in ("geometric", "poisson"):
            raise ValueError(f"distribution must be 'geometric' or 'poisson', got {self.distribution!r}")
        if self.noise not in ("gaussian", "rademacher"):
            raise ValueError(f"noise must be 'gaussian' or 'rademacher', got {self.noise!r}")
        if not 0 < self.p < 1:
            raise ValueError(f"p must be in (0, 1), got {self.p}")

    # -- term weights -------------------------------------------------------
    def _weights(self) -> list[float]:
        """Per-term weights: 1 for deterministic terms, 1 / P(N >= k) for roulette ones."""
        if self.method == "series":
            return [1.0] * self.num_terms
        if self.distribution == "geometric":  # failures before a success, by inverting the CDF
            n = int(math.log1p(-torch.rand(()).item()) // math.log1p(-self.p)) + 1
            tail = [(1 - self.p) ** -(k - 1) for k in range(1, n + 1)]
        else:
            n = int(torch.poisson(torch.tensor(self.rate)).item()) + 1
            tail = [1.0 / _poisson_tail(self.rate, k - 1) for k in range(1, n + 1)]
        return [1.0] * self.num_exact_terms + tail

    def _probe(self, x: torch.Tensor) -> torch.Tensor:
        v = torch.randn_like(x)
        return v.sign() if self.noise == "rademacher" else v

    # -- estimators -----------------------------------------------------------
    def __call__(self, g: Callable, x: torch.Tensor, context: torch.Tensor | None = None, event_dim: int = 1):
        """Returns ``(g(x, context), log det(I + J_g(x)))``, the log-det of batch shape
        ``x.shape[:-event_dim]`` (broadcast with the context's batch shape)."""
        if self.method == "exact":
            return _exact(g, x, context, event_dim)
        gx, jacobian = network_jacobian(g, x, context)
        weights = self._weights()
        v = self._probe(gx)
        if self.neumann_gradient and torch.is_grad_enabled():
            return gx, _neumann(jacobian, v, weights, event_dim)
        return gx, _series(jacobian, v, weights, event_dim)


def _poisson_tail(rate: float, k: int) -> float:
    """P(M >= k) for M ~ Poisson(rate)."""
    return 1.0 - sum(math.exp(-rate) * rate**j / math.factorial(j) for j in range(k))


def _event_sum(t: torch.Tensor, event_dim: int) -> torch.Tensor:
    return t.flatten(t.dim() - event_dim).sum(-1)


def _exact(g, x: torch.Tensor, context: torch.Tensor | None, event_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    size = x.shape[x.dim() - event_dim :].numel()
    eye = torch.eye(size, dtype=x.dtype, device=x.device)
    if hasattr(g, "linearize"):  # the Jacobian by matrix products
        gx, jacobian = g.linearize(x, context)
        return gx, torch.linalg.slogdet(eye + jacobian.matrix(gx.dim() - event_dim))[1]
    gx = g(x, context)  # first, outside the functional transforms (spectral norms update here)
    x = x.expand_as(gx)
    batch, event = x.shape[: x.dim() - event_dim], x.shape[x.dim() - event_dim :]
    flat = x.reshape(-1, *event)
    if context is None:
        jac = torch.func.vmap(torch.func.jacrev(lambda v: g(v, None)))(flat)
    else:
        ctx = context.expand(*batch, context.shape[-1]).reshape(-1, context.shape[-1])
        jac = torch.func.vmap(torch.func.jacrev(g))(flat, ctx)
    log_det = torch.linalg.slogdet(eye + jac.reshape(-1, size, size))[1]
    return gx, log_det.reshape(batch)


class _AutogradJacobian:
    """``J_g(x)`` through autograd, for networks without ``linearize``."""

    def __init__(self, gx: torch.Tensor, x: torch.Tensor) -> None:
        self.gx, self.x = gx, x

    def vjp(self, w: torch.Tensor) -> torch.Tensor:
        """``w^T J``, differentiable (a double backward) while grad mode is on."""
        (out,) = torch.autograd.grad(self.gx, self.x, w, retain_graph=True, create_graph=torch.is_grad_enabled())
        return out


def network_jacobian(g, x: torch.Tensor, context: torch.Tensor | None):
    """``g(x)`` and its Jacobian: the network's own `Linearization`
    (matrix products, first-order autograd only) where it has one, else autograd."""
    if hasattr(g, "linearize"):
        return g.linearize(x, context)
    with torch.enable_grad():
        x = x if x.requires_grad else x.detach().requires_grad_(True)
        gx = g(x, context)
        if gx.shape != x.shape:  # a context with more batch dims than x
            x = x.expand_as(gx)
            gx = g(x, context)
    return gx, _AutogradJacobian(gx, x)


def _series(jacobian, v, weights, event_dim: int) -> torch.Tensor:
    """The weighted series, differentiable while grad mode is on."""
    total, w = v.new_zeros(v.shape[: v.dim() - event_dim]), v
    for k, weight in enumerate(weights, start=1):
        w = jacobian.vjp(w)
        total = total + (-1) ** (k + 1) / k * weight * _event_sum(w * v, event_dim)
    return total


def _neumann(jacobian, v, weights, event_dim: int) -> torch.Tensor:
    """Value from the series (no graph kept); gradient from ``acc^T J v`` with
    ``acc^T = v^T sum_k (-1)^k weight_{k+1} J^k`` held fixed, an unbiased
    estimate of ``tr((I + J)^{-1} dJ)`` (the derivative of the log-det), by one
    differentiable vector-Jacobian product."""
    with torch.no_grad():
        value, w, acc = v.new_zeros(v.shape[: v.dim() - event_dim]), v, v.clone()
        for k, weight in enumerate(weights, start=1):
            w = jacobian.vjp(w)
            value = value + (-1) ** (k + 1) / k * weight * _event_sum(w * v, event_dim)
            if k < len(weights):
                acc = acc + (-1) ** k * weights[k] * w
    surrogate = _event_sum(jacobian.vjp(acc) * v, event_dim)
    return value + surrogate - surrogate.detach()
