"""Warm starts for flow guides: Gaussian approximations to the posterior in
the flat unconstrained latent space, chosen by their ELBO.

`laplace` is the Laplace approximation (MAP point and inverse-Hessian
Cholesky factor). It is exact for Gaussian posteriors and excellent for
badly scaled regressions, but it fails in ways a guide must not inherit: the
MAP of a centred hierarchical model sits where a group scale collapses to
0, a multimodal likelihood (an ODE model) traps L-BFGS in a local optimum,
a flat direction has no curvature. `gaussian_warm_start` therefore
tries several candidates (Laplace from the prior mean and from prior draws
until two agree on the best mode, and a short mean-field fit) and keeps the
best, which a degenerate or local candidate cannot be.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import pyro
import torch
from pyro import poutine
from pyro.distributions import constraints
from pyro.infer.autoguide import AutoNormal

from pyroflows.distributed import process_local
from pyroflows.infer.latent import LatentSpace, init_to_mean_or_zero

__all__ = ["Candidate", "gaussian_elbo", "gaussian_warm_start", "laplace", "mean_field", "mean_field_vector"]

MIN_EIGENVALUE = 1e-10  # floor on Hessian eigenvalues, relative to the largest
MAX_CONDITION = 1e12  # a Laplace covariance past this condition number is degenerate
BOUNDARY = 15.0  # |unconstrained value| past which a constrained MAP sits at its support's edge
MODE_TOLERANCE = 1e-4  # two MAPs whose log densities agree to this (relative, at least absolute) are one mode
Energy = Callable[[torch.Tensor], torch.Tensor]


def _guarded(energy: Energy) -> Energy:
    """``energy`` that returns ``inf`` where the model cannot be evaluated
    (e.g. a Cholesky factorisation fails far from the posterior)."""

    def wrapped(z):
        try:
            value = energy(z)
        except (RuntimeError, ValueError):
            return z.new_full(z.shape[:-1], math.inf)
        return torch.where(torch.isnan(value), math.inf, value)

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


def _finite_difference_hessian(energy: Energy, z: torch.Tensor) -> torch.Tensor:
    """Central differences of the gradient, all 2D points in one batched call
    (for models whose kernels are not twice differentiable)."""
    step = torch.finfo(z.dtype).eps ** (1 / 3) * z.abs().clamp(min=1.0)
    offsets = torch.diag(step)
    points = torch.cat([z + offsets, z - offsets]).detach().requires_grad_(True)
    (grads,) = torch.autograd.grad(energy(points).sum(), points)
    d = len(z)
    return (grads[:d] - grads[d:]) / (2 * step[:, None])


def _hessian(energy: Energy, z: torch.Tensor) -> torch.Tensor:
    try:
        hess = torch.autograd.functional.hessian(energy, z, vectorize=True)
    except RuntimeError:  # a kernel without double backward (e.g. a flow prior in the model)
        hess = _finite_difference_hessian(energy, z)
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


@dataclass
class Candidate:
    """A Gaussian ``N(loc, scale_tril scale_tril^T)`` over the flat latents,
    where it came from, its ELBO estimate and why it may be degenerate."""

    name: str
    loc: torch.Tensor
    scale_tril: torch.Tensor
    elbo: float = -math.inf
    problem: str | None = None


def _laplace_from(space: LatentSpace, z0: torch.Tensor, args, kwargs, max_iter: int, newton_steps: int) -> Candidate:
    energy = _guarded(lambda z: -space.log_density(z, *args, **kwargs))
    identity = torch.eye(space.dim, dtype=z0.dtype)
    if not torch.isfinite(energy(z0)):
        return Candidate("laplace", z0, identity, problem="the log density is not finite at the start")
    loc = _newton(energy, _lbfgs(energy, z0, max_iter), newton_steps)
    if not torch.isfinite(energy(loc)):
        return Candidate("laplace", z0, identity, problem="the MAP search diverged")
    scale_tril, cond = identity, 1.0
    for _ in range(2):  # second round in whitened coordinates
        whitened = _guarded(lambda u, loc=loc, tril=scale_tril: energy(loc + u @ tril.T))
        u = _newton(whitened, torch.zeros_like(loc), newton_steps)
        hess = _hessian(whitened, u)
        if not torch.isfinite(hess).all():
            return Candidate("laplace", loc, identity, problem="the Hessian at the MAP is not finite")
        evals = torch.linalg.eigvalsh(hess.double())
        cond = cond * float(evals.abs().max() / evals.abs().min().clamp(min=1e-300))
        loc = loc + scale_tril @ u
        cov = _positive_inverse(hess)
        scale_tril = scale_tril @ torch.linalg.cholesky(0.5 * (cov + cov.T)).to(z0.dtype)
    return Candidate("laplace", loc, scale_tril, problem=_laplace_problem(space, loc, scale_tril, cond))


def _bounded(support) -> bool:
    while hasattr(support, "base_constraint"):  # independent(real, 1) is real_vector
        support = support.base_constraint
    return support is not constraints.real


def _laplace_problem(space: LatentSpace, loc: torch.Tensor, scale_tril: torch.Tensor, cond: float) -> str | None:
    if not torch.isfinite(scale_tril).all():
        return "its covariance is not finite"
    if cond > MAX_CONDITION:
        return f"the Hessian's condition number is {cond:.1e}"
    pos = 0
    for name, s in space.sites.items():
        size = math.prod(s["unconstrained_shape"])
        if _bounded(s["fn"].support) and (loc[pos : pos + size].abs() > BOUNDARY).any():
            return f"the MAP of {name!r} sits at the edge of its support"
        pos += size
    return None


def laplace(
    space: LatentSpace, *args, max_iter: int = 500, newton_steps: int = 10, **kwargs
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(loc, scale_tril)`` of the Laplace approximation to the model's
    posterior over unconstrained latents, from ``space.init``.

    L-BFGS, damped Newton steps, then the inverse Hessian; the Newton steps
    and the Hessian are redone in the coordinates whitened by the first
    estimate, which keeps them accurate in float32 when the posterior is
    badly scaled or strongly correlated (condition numbers of 1e9 and more).
    Where the Hessian is not positive definite (funnels, flat directions) its
    eigenvalues are replaced by their floored magnitudes. Where the model's
    kernels are not twice differentiable the Hessian comes from finite
    differences of gradients. Raises ``ValueError`` if the log density is
    not finite at ``space.init``; warns and returns ``(init or MAP, I)`` if
    the search diverges or the Hessian is not finite.
    """
    candidate = _laplace_from(space, space.init, args, kwargs, max_iter, newton_steps)
    if candidate.problem == "the log density is not finite at the start":
        raise ValueError(
            "the model's log density is not finite at its initial point (prior means, else unconstrained zero)"
        )
    if candidate.problem in ("the MAP search diverged", "the Hessian at the MAP is not finite"):
        warnings.warn(f"Laplace warm start: {candidate.problem}; starting from N(loc, I)", stacklevel=2)
    return candidate.loc, candidate.scale_tril


def gaussian_elbo(space: LatentSpace, candidate: Candidate, eps: torch.Tensor, args, kwargs) -> float:
    """Monte Carlo ELBO of the candidate Gaussian, with base draws ``eps`` (S, D)."""
    z = candidate.loc + eps @ candidate.scale_tril.T
    log_q = -0.5 * (eps**2).sum(-1) - candidate.scale_tril.diagonal().abs().log().sum()
    with torch.no_grad():
        log_p = _guarded(lambda z: space.log_density(z, *args, **kwargs))(z)
    value = (log_p - log_q).mean() - 0.5 * space.dim * math.log(2 * math.pi)
    return float(value) if torch.isfinite(value) else -math.inf


def mean_field(model, args, kwargs, num_steps: int = 300, lr: float = 0.05, plates=None) -> tuple[dict, dict]:
    """A short mean-field (diagonal Gaussian) SVI fit; returns per-site
    unconstrained ``(locs, scales)`` of full (not subsampled) shape.
    ``plates``: the guide's ``create_plates`` (the model's subsample indices)."""
    from pyroflows.infer.fit import fit  # fit imports nothing from here; import late to keep layers simple

    with pyro.get_param_store().scope():
        guide = AutoNormal(model, init_loc_fn=init_to_mean_or_zero, create_plates=plates)
        with process_local():  # under a data-parallel fit: each process on its own shard
            fit(model, guide, *args, num_steps=num_steps, lr=lr, progress=False, stop=None, num_particles=8, **kwargs)
        with torch.no_grad():
            names = [name for name, site in guide.prototype_trace.iter_stochastic_nodes()]
            locs = {name: _deep_getattr(guide.locs, name).detach().clone() for name in names}
            scales = {name: _deep_getattr(guide.scales, name).detach().clone() for name in names}
    return locs, scales


def mean_field_vector(model, names, args, kwargs, dtype, num_steps: int = 300, plates=None):
    """`mean_field` as flat ``(loc, scale)`` vectors, sites in the order ``names``."""
    locs, scales = mean_field(model, args, kwargs, num_steps=num_steps, plates=plates)
    loc = torch.cat([locs[n].reshape(-1) for n in names]).to(dtype)
    return loc, torch.cat([scales[n].reshape(-1) for n in names]).to(dtype)


def _choose(space: LatentSpace, candidates: list[Candidate], args, kwargs) -> Candidate:
    reliable = [c for c in candidates if c.name.startswith("Laplace") and c.problem is None and math.isfinite(c.elbo)]
    if not reliable:
        return max(candidates, key=lambda c: c.elbo)
    best = max(reliable, key=lambda c: c.elbo)
    with torch.no_grad():
        density = _guarded(lambda z: space.log_density(z, *args, **kwargs))
        others = [c for c in candidates if not c.name.startswith("Laplace") and c.elbo > best.elbo]
        for other in others:
            if density(other.loc) > density(best.loc):  # a better mode than every reliable MAP
                best = other
    return best


def _deep_getattr(obj, dotted: str):
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def _prior_start(space: LatentSpace, args, kwargs, generator: torch.Generator) -> torch.Tensor:
    """An unconstrained point drawn from the prior (where it can be sampled;
    else the initial point plus standard normal noise). Pyro's draws use
    torch's global RNG: it is forked and seeded from ``generator``, so the
    starts are reproducible and the caller's random stream is untouched."""
    seed = int(torch.randint(2**62, (), generator=generator))
    try:
        with torch.random.fork_rng(devices=[]), poutine.block():
            torch.manual_seed(seed)
            trace = poutine.trace(poutine.uncondition(space.model)).get_trace(*args, **kwargs)
        start = space.pack({name: trace.nodes[name]["value"] for name in space.sites})
        if not torch.isfinite(start).all():
            raise ValueError
    except (NotImplementedError, ValueError, RuntimeError, KeyError):
        start = space.init + torch.randn(space.dim, generator=generator, dtype=space.init.dtype)
    return start.detach().to(space.init.dtype)


def _settled(space: LatentSpace, candidates: list[Candidate], args, kwargs, min_starts: int) -> bool:
    """Enough Laplace starts: two reached the best MAP found so far (a
    second, independent start confirms the mode), or ``min_starts`` ran and
    none is reliable (the mean-field fit takes over; more starts would not help)."""
    reliable = [c for c in candidates if c.problem is None]
    if not reliable:
        return len(candidates) >= min_starts
    with torch.no_grad():
        density = _guarded(lambda z: -space.log_density(z, *args, **kwargs))
        values = torch.stack([-density(c.loc) for c in reliable])
    best = values.max()
    return int((values >= best - MODE_TOLERANCE * best.abs().clamp(min=1.0)).sum()) >= 2


def _in_better_mode(space: LatentSpace, candidates: list[Candidate], args, kwargs) -> bool:
    """Whether the last candidate's location has a higher log density than every reliable MAP."""
    with torch.no_grad():
        density = _guarded(lambda z: -space.log_density(z, *args, **kwargs))
        maps = [-density(c.loc) for c in candidates[:-1] if c.problem is None]
        return not maps or bool(-density(candidates[-1].loc) > max(maps))


def gaussian_warm_start(
    space: LatentSpace,
    model,
    args,
    kwargs,
    *,
    min_starts: int = 3,
    max_starts: int = 8,
    mean_field_steps: int = 300,
    num_draws: int = 256,
    seed: int = 0,
) -> tuple[Candidate, list[Candidate]]:
    """The best of several Gaussian approximations.

    Candidates: the Laplace approximation from the prior mean and from prior
    draws, until two starts reach the same best MAP (at least two starts,
    at most ``max_starts``; ``min_starts`` when none is reliable), and a
    ``mean_field_steps`` mean-field fit, all scored by their ELBO with the
    same ``num_draws`` base draws. Where the mean-field fit sits in a better
    mode than every start's MAP (on the Lotka-Volterra posterior the prior
    mean and a prior draw can both lead L-BFGS to the same local optimum),
    a Laplace approximation from the fit's location joins the candidates.
    A reliable Laplace approximation wins (the best by ELBO among them): its
    full covariance aligns the flow with the posterior's correlations, which
    a diagonal cannot, even where its ELBO as a Gaussian is worse. The
    mean-field fit wins when no Laplace approximation is reliable, or when
    it sits in a better mode (a log density above every reliable MAP's).
    Returns the winner and every candidate (for reporting).
    """
    if not 2 <= min_starts <= max_starts:
        raise ValueError(f"need 2 <= min_starts <= max_starts, got {min_starts} and {max_starts}")
    generator = torch.Generator().manual_seed(seed)
    dtype = space.init.dtype
    candidates: list[Candidate] = []
    while len(candidates) < max_starts:
        i = len(candidates)
        start = space.init if i == 0 else _prior_start(space, args, kwargs, generator)
        candidate = _laplace_from(space, start, args, kwargs, max_iter=500, newton_steps=10)
        candidate.name = "Laplace from the prior mean" if i == 0 else f"Laplace from prior draw {i}"
        candidates.append(candidate)
        if len(candidates) >= 2 and _settled(space, candidates, args, kwargs, min_starts):
            break
    if mean_field_steps:
        loc, scale = mean_field_vector(model, space.sites, args, kwargs, dtype)
        candidates.append(Candidate("mean-field fit", loc, torch.diag(scale)))
        if _in_better_mode(space, candidates, args, kwargs):  # every start missed the mode the fit found
            candidate = _laplace_from(space, loc, args, kwargs, max_iter=500, newton_steps=10)
            candidate.name = "Laplace from the mean-field fit"
            candidates.append(candidate)
    eps = torch.randn(num_draws, space.dim, generator=generator, dtype=dtype)
    for candidate in candidates:
        if candidate.problem not in ("the log density is not finite at the start", "the MAP search diverged"):
            candidate.elbo = gaussian_elbo(space, candidate, eps, args, kwargs)
    best = _choose(space, candidates, args, kwargs)
    if not math.isfinite(best.elbo):
        best = Candidate("the initial point", space.init.clone(), torch.eye(space.dim, dtype=dtype))
    return best, candidates


def marginal_mode(negative_log_density, start: torch.Tensor, max_iter: int = 100):
    """``(mode, scale_tril of the inverse Hessian)`` of a smooth, cheap-to-
    differentiate ``negative_log_density`` over a few variables, by L-BFGS
    from ``start`` and an autograd Hessian; or a string saying what failed."""
    point = start.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        if not torch.isfinite(negative_log_density(point)):
            return "the globals' Laplace-marginal density is not finite at the mean-field start"
        optimizer = torch.optim.LBFGS([point], max_iter=max_iter, line_search_fn="strong_wolfe")

        def closure():
            optimizer.zero_grad()
            value = negative_log_density(point)
            value.backward()
            return value

        optimizer.step(closure)
        mode = point.detach()
        hessian = torch.autograd.functional.hessian(negative_log_density, mode)
    if not (torch.isfinite(mode).all() and torch.isfinite(hessian).all()):
        return "the globals' Laplace-marginal mode search diverged"
    chol, info = torch.linalg.cholesky_ex(0.5 * (hessian + hessian.T))
    if info != 0:
        return "the globals' Laplace-marginal Hessian is not positive definite at its mode"
    cov = torch.cholesky_inverse(chol)
    return mode, torch.linalg.cholesky(0.5 * (cov + cov.T))
