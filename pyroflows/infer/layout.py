"""Where each latent site sits in a guide's flat unconstrained vector, and
which sites are *local*: one value per member of a plate.

A hierarchical model has global latents (shared by all groups) and local
latents inside one plate (one vector per group). When the model's log
density is a sum over the plate's members of terms that each involve one
member's locals and the globals, the posterior factorises exactly as

$$
p(g, l_1, \\dots, l_N \\mid y) = p(g \\mid y) \\prod_i p(l_i \\mid g, y_i),
$$

which a structured guide can match with one conditional flow shared by the
members. `LatentLayout` finds that split from a prototype trace and
says why when it does not apply (nested plates, latents in two plates,
members that interact).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from pyro.distributions.transforms import biject_to
from pyro.poutine.indep_messenger import CondIndepStackFrame

__all__ = ["LatentLayout", "LocalPlate", "SiteLayout", "members_interact"]


@dataclass
class LocalPlate:
    """The plate whose members carry local latents: ``size`` members, of
    which ``subsample_size`` are drawn per step (``None``: all)."""

    name: str
    dim: int
    size: int
    subsample_size: int | None


@dataclass
class SiteLayout:
    """One latent site: its full (not subsampled) shapes and its slice
    ``[start, start + numel)`` of the flat unconstrained vector."""

    name: str
    support: object
    event_dim: int
    shape: tuple[int, ...]
    unconstrained_shape: tuple[int, ...]
    start: int
    cond_indep_stack: tuple
    local: bool = False

    @property
    def numel(self) -> int:
        return math.prod(self.unconstrained_shape)

    @property
    def transform(self):
        return biject_to(self.support)


def _full_shape(shape: torch.Size, event_dim: int, frame: CondIndepStackFrame) -> tuple[int, ...]:
    full = list(shape)
    full_size = frame.full_size or frame.size
    axis = len(shape) - event_dim + frame.dim
    if 0 <= axis < len(shape) and full[axis] == frame.size:
        full[axis] = full_size
    return tuple(full)


def _member_axis(shape: tuple[int, ...], event_dim: int, frame: CondIndepStackFrame) -> int:
    return len(shape) - event_dim + frame.dim


class LatentLayout:
    """The flat layout of a prototype trace's latent sites.

    ``plate`` is the plate of the local sites, or ``None`` with
    ``joint_reason`` saying why the guide must treat all latents jointly.
    ``global_index`` (Dg,) and ``local_index`` (N, d) index the flat vector.
    """

    def __init__(self, sites, structure: str = "auto") -> None:
        self.sites: dict[str, SiteLayout] = {}
        start = 0
        frames: dict[str, CondIndepStackFrame] = {}
        for name, site in sites:
            value, fn = site["value"], site["fn"]
            unconstrained = biject_to(fn.support).inv(value)
            unc_event_dim = fn.event_dim + unconstrained.dim() - value.dim()
            stack = tuple(f for f in site["cond_indep_stack"] if f.vectorized)
            shape, unc_shape = tuple(value.shape), tuple(unconstrained.shape)
            for frame in stack:
                shape = _full_shape(torch.Size(shape), fn.event_dim, frame)
                unc_shape = _full_shape(torch.Size(unc_shape), unc_event_dim, frame)
                frames[frame.name] = frame
            self.sites[name] = SiteLayout(name, fn.support, fn.event_dim, shape, unc_shape, start, stack)
            start += self.sites[name].numel
        self.dim = start
        self.plate: LocalPlate | None = None
        self.joint_reason = self._find_plate(frames) if structure != "joint" else "structure='joint' was asked for"
        if self.plate is None:
            for site in self.sites.values():
                site.local = False
        self._build_indices()

    @property
    def subsampled(self) -> bool:
        return any((f.full_size or f.size) != f.size for s in self.sites.values() for f in s.cond_indep_stack)

    def _find_plate(self, frames: dict[str, CondIndepStackFrame]) -> str | None:
        plated = [s for s in self.sites.values() if s.cond_indep_stack]
        if not plated:
            return "the model has no latents inside a plate"
        if any(len(s.cond_indep_stack) > 1 for s in plated):
            return "latents sit in nested plates"
        names = {s.cond_indep_stack[0].name for s in plated}
        if len(names) > 1:
            return f"latents sit in more than one plate ({sorted(names)})"
        frame = frames[names.pop()]
        size = frame.full_size or frame.size
        if size < 2:
            return f"plate {frame.name!r} has a single member"
        for s in self.sites.values():
            unc_event_dim = s.event_dim + len(s.unconstrained_shape) - len(s.shape)
            batch = s.unconstrained_shape[: len(s.unconstrained_shape) - unc_event_dim]
            if not s.cond_indep_stack:
                if batch:
                    return f"global site {s.name!r} has batch dims {batch} outside any plate"
                continue
            if _member_axis(s.unconstrained_shape, unc_event_dim, frame) != 0 or any(n != 1 for n in batch[1:]):
                return f"site {s.name!r} has batch dims {batch} besides plate {frame.name!r}"
        for s in plated:
            s.local = True
        subsample = frame.size if frame.size != size else None
        self.plate = LocalPlate(frame.name, frame.dim, size, subsample)
        return None

    def _build_indices(self) -> None:
        flat = torch.arange(self.dim)
        globals_, locals_ = [], []
        for s in self.sites.values():
            part = flat[s.start : s.start + s.numel]
            if s.local:
                locals_.append(part.reshape(self.plate.size, -1))
            else:
                globals_.append(part)
        self.global_index = torch.cat(globals_) if globals_ else flat[:0]
        self.local_index = torch.cat(locals_, -1) if locals_ else flat[:0].reshape(0, 0)
        # where each site's coordinates sit within the globals, or within a member's locals
        self.slices: dict[str, slice] = {}
        pos = {True: 0, False: 0}
        for s in self.sites.values():
            width = s.numel // self.plate.size if s.local else s.numel
            self.slices[s.name] = slice(pos[s.local], pos[s.local] + width)
            pos[s.local] += width

    @property
    def global_dim(self) -> int:
        return len(self.global_index)

    @property
    def local_dim(self) -> int:
        return self.local_index.shape[1] if self.plate is not None else 0

    def disable_plate(self, reason: str) -> None:
        """Treat every latent as global (the joint flow), recording ``reason``."""
        self.plate, self.joint_reason = None, reason
        for site in self.sites.values():
            site.local = False
        self._build_indices()

    def unpack(self, z: torch.Tensor, batch_shape: tuple[int, ...] = ()):
        """Yield ``(site, unconstrained value)`` of full shape for flat ``z``
        of shape ``batch_shape + (D,)``."""
        for s in self.sites.values():
            yield s, z[..., s.start : s.start + s.numel].reshape(tuple(batch_shape) + s.unconstrained_shape)

    def assemble(self, globals_: torch.Tensor, locals_: torch.Tensor | None) -> torch.Tensor:
        """Flat (..., D) vector from globals (..., Dg) and locals (..., N, d)."""
        batch = globals_.shape[:-1] if locals_ is None else locals_.shape[:-2]
        z = globals_.new_zeros(batch + (self.dim,))
        z = z.index_copy(-1, self.global_index, globals_.expand(batch + (self.global_dim,)))
        if locals_ is not None and self.local_dim:
            z = z.index_copy(-1, self.local_index.reshape(-1), locals_.reshape(batch + (-1,)))
        return z

    def split(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Inverse of `assemble`: (globals (..., Dg), locals (..., N, d))."""
        locals_ = z[..., self.local_index.reshape(-1)].reshape(z.shape[:-1] + tuple(self.local_index.shape))
        return z[..., self.global_index], locals_


def members_interact(space, layout: LatentLayout, args, kwargs, tolerance: float = 1e-4) -> bool:
    """Whether the model's log density couples the locals of different members.

    If ``log p = f(g) + sum_i h_i(l_i, g)``, the gradient with respect to
    ``l_j`` does not change when the locals of other members move. Moves the
    locals of a random half of the members (twice, from a perturbed initial
    point) and checks the others' gradients; ``space`` is the model's
    `LatentSpace` (same site order as ``layout``).
    """
    generator = torch.Generator().manual_seed(0)
    index = layout.local_index
    z = space.init + 0.1 * torch.randn(space.dim, generator=generator, dtype=space.init.dtype)

    def local_grad(point):
        point = point.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(space.log_density(point, *args, **kwargs), point)
        return grad[index]

    base = local_grad(z)
    scale = base.abs().max().clamp(min=1e-6)
    for _ in range(2):
        moved = torch.rand(layout.plate.size, generator=generator) < 0.5
        step = torch.zeros_like(z)
        step[index[moved].reshape(-1)] = 0.5 * torch.randn(int(moved.sum()) * index.shape[1], generator=generator).to(z)
        change = (local_grad(z + step) - base)[~moved].abs().max() if (~moved).any() else z.new_zeros(())
        if not torch.isfinite(change) or change > tolerance * scale:
            return True
    return False
