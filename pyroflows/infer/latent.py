"""The unconstrained latent space of a Pyro model, flattened to one vector.

`LatentSpace` traces a model once at its prior means (without
sampling its prior, so improper priors work), then maps between flat unconstrained vectors ``z`` of
shape (..., D) and dicts of constrained site values, and evaluates the log
joint density of ``z`` (the model's log density plus the log-Jacobian of the
``biject_to`` maps), vectorised over the leading dims of ``z``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import pyro
import torch
from pyro import poutine
from pyro.distributions.transforms import biject_to
from pyro.distributions.util import sum_rightmost
from pyro.infer.autoguide.initialization import InitMessenger
from pyro.poutine import runtime
from pyro.poutine.util import site_is_subsample

__all__ = [
    "LatentSpace",
    "check_continuous",
    "init_to_mean_or_zero",
    "init_to_unconstrained_zero",
    "isolated",
    "max_plate_nesting",
]


@contextmanager
def isolated() -> Iterator[None]:
    """Run Pyro code as if no handler or plate were active, with gradients on.

    A guide sets itself up on its first call, often inside the caller's ELBO
    (its trace, its particle plate at an explicit ``max_plate_nesting``) or
    under ``torch.no_grad``. The warm start is a separate inference: it must
    neither be seen by those handlers nor collide with their plate dims.
    Pyro keeps both in module globals, which this saves, empties and restores.
    """
    handlers, dims = runtime._PYRO_STACK[:], runtime._DIM_ALLOCATOR._stack[:]
    runtime._PYRO_STACK.clear()
    runtime._DIM_ALLOCATOR._stack.clear()
    try:
        with torch.enable_grad(), torch.inference_mode(False):
            yield
    finally:
        runtime._PYRO_STACK[:] = handlers
        runtime._DIM_ALLOCATOR._stack[:] = dims


def init_to_unconstrained_zero(site: dict) -> torch.Tensor:
    """Init strategy: the point whose unconstrained value is zero (e.g. 1 for
    a positive site). It never samples the prior, so improper priors
    (``dist.ImproperUniform``) work."""
    fn = site["fn"]
    check_continuous(site["name"], fn)
    transform = biject_to(fn.support)
    shape = transform.inverse_shape(fn.shape())
    mean = _mean(fn)
    dtype = mean.dtype if mean is not None else torch.get_default_dtype()
    return transform(torch.zeros(shape, dtype=dtype)).detach()


def init_to_mean_or_zero(site: dict) -> torch.Tensor:
    """Init strategy: the prior mean where it is finite and inside the
    support, else `init_to_unconstrained_zero`. Never samples."""
    mean = _mean(site["fn"])
    if mean is not None and torch.isfinite(mean).all():
        mean = mean.expand(site["fn"].shape()).detach()
        if site["fn"].support.check(mean).all():
            return mean
    return init_to_unconstrained_zero(site)


def check_continuous(name: str, fn) -> None:
    if fn.support.is_discrete:
        raise TypeError(
            f"latent site {name!r} is discrete ({type(fn).__name__}); flow guides need continuous "
            "latents. Enumerate it out: decorate the model with pyro.infer.config_enumerate, hide the "
            "site from the guide (poutine.block) and fit with TraceEnum_ELBO."
        )


def _mean(fn) -> torch.Tensor | None:
    try:
        mean = fn.mean
    except (NotImplementedError, AttributeError, ValueError):
        return None
    return mean if isinstance(mean, torch.Tensor) else None


def max_plate_nesting(trace) -> int:
    """The number of batch dims a model's plates use (0 if none)."""
    dims = [-f.dim for site in trace.nodes.values() for f in site.get("cond_indep_stack", ()) if f.dim is not None]
    return max(dims, default=0)


def _latent_sites(trace):
    for name, site in trace.nodes.items():
        if site["type"] != "sample" or site_is_subsample(site) or site["is_observed"]:
            continue
        if not site["infer"].get("is_auxiliary"):
            yield name, site


class LatentSpace:
    """Flat unconstrained view of a model's latent sites.

    Raises ``ValueError`` for models with no latent sites and ``TypeError`` for
    discrete latent sites (use ``TraceEnum_ELBO`` and ``config_enumerate``).
    """

    def __init__(self, model, *args, **kwargs) -> None:
        self.model = model
        with poutine.block():
            trace = poutine.trace(InitMessenger(init_to_mean_or_zero)(model)).get_trace(*args, **kwargs)
        self.max_plate_nesting = max_plate_nesting(trace)
        self.sites: dict[str, dict] = {}
        for name, site in _latent_sites(trace):
            fn = site["fn"]
            check_continuous(name, fn)
            transform = biject_to(fn.support)
            unconstrained = transform.inv(site["value"])
            self.sites[name] = {
                "fn": fn,
                "transform": transform,
                "shape": tuple(site["value"].shape),
                "unconstrained_shape": tuple(unconstrained.shape),
                "event_dim": fn.event_dim + unconstrained.dim() - site["value"].dim(),
                "init": unconstrained.detach().reshape(-1),
            }
        if not self.sites:
            raise ValueError("the model has no latent sample sites: there is nothing to infer")
        self.dim = sum(math.prod(s["unconstrained_shape"]) for s in self.sites.values())
        self.init = torch.cat([s["init"] for s in self.sites.values()])

    def _batched(self, z: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
        """Reshape (S..., D) to (prod S, 1 x nesting, D) so the sample dim sits left of every plate."""
        if z.shape[-1] != self.dim:
            raise ValueError(f"expected latent vectors of size {self.dim}, got shape {tuple(z.shape)}")
        batch = tuple(z.shape[:-1])
        return z.reshape((-1,) + (1,) * self.max_plate_nesting + (self.dim,)), batch

    def unpack(self, z: torch.Tensor) -> dict[str, torch.Tensor]:
        """Constrained site values for latents ``z`` of shape (S, D) (or (D,))."""
        return self._unpack(z)[0]

    def _unpack(self, z: torch.Tensor):
        single = z.dim() == 1
        zb, batch = self._batched(z)
        values, log_jac, pos = {}, zb.new_zeros(zb.shape[0]), 0
        for name, s in self.sites.items():
            size = math.prod(s["unconstrained_shape"])
            shape = torch.broadcast_shapes(s["unconstrained_shape"], zb.shape[:-1] + (1,) * s["event_dim"])
            u = zb[..., pos : pos + size].reshape(shape)
            x = s["transform"](u)
            jac = s["transform"].log_abs_det_jacobian(u, x)
            jac = sum_rightmost(jac, jac.dim() - x.dim() + s["fn"].event_dim)
            log_jac = log_jac + jac.reshape(zb.shape[0], -1).sum(-1)
            values[name] = x[0].reshape(s["shape"]) if single else x
            pos += size
        return values, log_jac, batch

    def pack(self, values: dict[str, torch.Tensor], sample_shape: tuple[int, ...] = ()) -> torch.Tensor:
        """Inverse of `unpack`: constrained values with leading ``sample_shape`` to (..., D)."""
        parts = []
        for name, s in self.sites.items():
            if name not in values:
                raise ValueError(f"missing latent site {name!r}; expected {list(self.sites)}")
            u = s["transform"].inv(torch.as_tensor(values[name]))
            parts.append(u.reshape(tuple(sample_shape) + (-1,)))
        return torch.cat(parts, -1)

    def log_density(self, z: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        """Log joint density of unconstrained ``z`` (..., D): log p(x, data) + log|J|."""
        values, log_jac, batch = self._unpack(z)
        num = log_jac.shape[0]
        with poutine.block(), pyro.plate("_latent_space_samples", num, dim=-self.max_plate_nesting - 1):
            trace = poutine.trace(poutine.condition(self.model, values)).get_trace(*args, **kwargs)
        trace.compute_log_prob()
        total = log_jac
        for site in trace.nodes.values():
            if site["type"] != "sample" or site_is_subsample(site):
                continue
            lp = site["log_prob"]
            if lp.dim() > self.max_plate_nesting:
                total = total + lp.reshape(lp.shape[0], -1).sum(-1)
            else:
                total = total + lp.sum()
        return total.reshape(batch)
