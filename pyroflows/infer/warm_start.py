"""Laplace warm start: the MAP point and the inverse-Hessian Cholesky factor
in the flat unconstrained latent space (Laplace approximation)."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable

import torch

from pyroflows.infer.latent import LatentSpace

__all__ = ["laplace"]

MIN_EIGENVALUE = 1e-10  # floor on Hessian eigenvalues, relative to the largest
Energy = Callable[[torch.Tensor], torch.Tensor]


def _guarded(energy: Energy) -> Energy:
    """``energy`` that returns ``inf`` where the model cannot be evaluated
    (e.g. a Cholesky factorisation fails far from the posterior)."""

    def wrapped(z):
        try:
            return energy(z)
        except (RuntimeError, ValueError):
            return z.new_tensor(math.inf)

    return wrapped


def _lbfgs(energy: Energy, z0: torch.Tensor, max_iter: int) -> torch.Tensor:
    """L-BFGS from ``z0``; returns the best finite point it visited."""
    z = z0.clone().requires_grad_(True)
    opt = torch.optim.LBFGS([z], lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe", tolerance_grad=1e-9)
    best = [math.inf, z0.clone()]

    def closure():
        opt.zero_grad()
        loss = energy(z)
        if not torch.isfinite(loss):
            raise FloatingPointError
        loss.backward()
        if loss.item() < best[0]:
            best[:] = [loss.item(), z.detach().clone()]
        return loss

    try:
        opt.step(closure)
    except FloatingPointError:
        pass
    return best[1]


def _hessian(energy: Energy, z: torch.Tensor) -> torch.Tensor:
    hess = torch.autograd.functional.hessian(energy, z, vectorize=True)
    return 0.5 * (hess + hess.T)


def _positive_inverse(hess: torch.Tensor) -> torch.Tensor:
    """Inverse of ``hess`` with its eigenvalues replaced by their floored magnitudes."""
    evals, evecs = torch.linalg.eigh(hess.double())
    floor = MIN_EIGENVALUE * evals.abs().max().clamp(min=1.0)
    evals = evals.abs().clamp(min=floor)  # negative curvature: use its magnitude
    return (evecs / evals) @ evecs.T


def _newton(energy: Energy, z: torch.Tensor, steps: int) -> torch.Tensor:
    """Damped Newton steps (L-BFGS stalls on badly conditioned float32 problems)."""
    value = energy(z)
    for _ in range(steps):
        zg = z.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(energy(zg), zg)
        step = (_positive_inverse(_hessian(energy, z)) @ grad.double()).to(z.dtype)
        for scale in (1.0, 0.5, 0.25, 0.125):
            candidate = z - scale * step
            new = energy(candidate)
            if torch.isfinite(new) and new <= value:
                break
        else:
            return z
        improved = value - new
        z, value = candidate, new
        if improved <= 1e-6 * max(1.0, abs(value.item())):
            break
    return z


def laplace(
    space: LatentSpace, *args, max_iter: int = 500, newton_steps: int = 10, **kwargs
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(loc, scale_tril)`` of the Laplace approximation to the model's
    posterior over unconstrained latents.

    L-BFGS from ``space.init``, damped Newton steps, then the inverse Hessian;
    the Newton steps and the Hessian are redone in the coordinates whitened by
    the first estimate, which keeps them accurate in float32 when the
    posterior is badly scaled or strongly correlated (condition numbers of
    1e9 and more). Where the Hessian is not positive definite (funnels, flat
    directions) its eigenvalues are replaced by their floored magnitudes. If
    the density cannot be evaluated at the optimum it falls back to
    ``(space.init, I)`` with a warning.
    """
    energy = _guarded(lambda z: -space.log_density(z, *args, **kwargs))
    z0 = space.init
    if not torch.isfinite(energy(z0)):
        raise ValueError(
            "the model's log density is not finite at its initial point (prior means, else unconstrained zero)"
        )
    loc = _newton(energy, _lbfgs(energy, z0, max_iter), newton_steps)
    identity = torch.eye(space.dim, dtype=z0.dtype)
    if not torch.isfinite(energy(loc)):
        warnings.warn("Laplace warm start: the MAP search diverged; starting from N(init, I)", stacklevel=3)
        return z0.clone(), identity
    scale_tril = identity
    for _ in range(2):  # second round in whitened coordinates
        whitened = _guarded(lambda u, loc=loc, tril=scale_tril: energy(loc + tril @ u))
        u = _newton(whitened, torch.zeros_like(loc), newton_steps)
        hess = _hessian(whitened, u)
        if not torch.isfinite(hess).all():
            warnings.warn("Laplace warm start: non-finite Hessian; starting from N(MAP, I)", stacklevel=3)
            return loc, identity
        loc = loc + scale_tril @ u
        cov = _positive_inverse(hess)
        scale_tril = scale_tril @ torch.linalg.cholesky(0.5 * (cov + cov.T)).to(z0.dtype)
    return loc, scale_tril
