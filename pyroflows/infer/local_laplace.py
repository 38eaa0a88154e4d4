"""A Gaussian for each member's locals given the globals: one Newton step.

In a hierarchical model the locals of member ``i`` enter the log density
only through ``h_i(l_i, g) = log p(l_i | g) + log p(y_i | l_i, g)``. Given
the globals ``g``, a Newton step on ``h_i`` from an anchor ``a_i``,

$$
\\Lambda_i = -\\nabla^2_{l} h_i(a_i, g), \\qquad
\\mu_i = a_i + \\Lambda_i^{-1} \\nabla_{l} h_i(a_i, g),
$$

gives ``N(mu_i, Lambda_i^{-1})``: the exact conditional posterior when
``h_i`` is quadratic in ``l_i`` (Gaussian random effects with a Gaussian
likelihood, centred or not) and its Laplace approximation otherwise (the
approach of INLA and TMB for GLMMs). The member flow then corrects what is
not Gaussian. Because ``mu_i`` and ``Lambda_i`` are recomputed for every
draw of ``g``, the conditional follows the globals exactly where a learned
map would have to generalise, and the globals' marginal is not squeezed by
a conditional that fits only near its mode (the usual cause of too-narrow
hyperparameter posteriors in amortised guides).

Cost per step: one trace of the model and ``1 + d`` backward passes for
``d`` locals per member, all kept differentiable. Members whose Hessian is
not negative definite (or whose step is absurd) keep their anchor and a
fallback scale.
"""

from __future__ import annotations

import functools

import pyro
import torch
from pyro import poutine
from pyro.distributions.util import scale_and_mask
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import site_is_subsample

from pyroflows.infer import small_linalg
from pyroflows.infer.indexing import IndexSelectMode
from pyroflows.infer.latent import isolated
from pyroflows.infer.layout import LatentLayout

__all__ = ["LocalLaplace", "newton_gaussian"]

MAX_LOCAL_DIM = 16  # d backward passes per step: beyond this the learned conditional is cheaper
MAX_STEP = 100.0  # a Newton step longer than this many conditional sds is not trusted


def newton_gaussian(
    log_density, anchor: torch.Tensor, fallback_scale: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """One Newton step per member: ``(mean (..., d), R (..., d, d))`` with
    ``R R^T`` the precision, so a draw is ``mean + R^{-T} z``.

    ``log_density(l)`` returns a scalar that sums independent terms, one per
    batch entry of ``anchor`` (..., d); the Hessian's diagonal blocks come
    from ``d`` Hessian-vector products. Entries whose precision is not
    positive definite or whose step exceeds ``MAX_STEP`` sds stay at the
    anchor with scale ``fallback_scale`` (..., d). Differentiable throughout.
    """
    point, grad, hessian = _gradient_and_hessian(log_density, anchor)
    precision = -0.5 * (hessian + hessian.mT)
    with torch.no_grad():
        chol = small_linalg.cholesky(precision)
        step = small_linalg.solve_lower(chol, grad)
        ok = torch.isfinite(chol).flatten(-2).all(-1) & (chol.diagonal(dim1=-2, dim2=-1) > 0).all(-1)
        ok = ok & torch.isfinite(step).all(-1) & (step.square().sum(-1) < MAX_STEP**2)
    fallback = torch.diag_embed(fallback_scale.expand_as(grad).pow(-2))
    precision = torch.where(ok[..., None, None], precision, fallback)
    grad = torch.where(ok[..., None], grad, torch.zeros_like(grad))
    chol = small_linalg.cholesky(precision)
    return point + small_linalg.cholesky_solve(grad, chol), chol


def _gradient_and_hessian(log_density, anchor: torch.Tensor):
    """``(point, gradient, Hessian blocks)`` of ``log_density`` at ``anchor``
    (..., d), the blocks from ``d`` Hessian-vector products; differentiable
    when gradients are enabled (else detached: sampling needs no graph)."""
    keep = torch.is_grad_enabled()
    with torch.enable_grad():
        point = anchor if anchor.requires_grad else anchor.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(log_density(point), point, create_graph=True)
        columns = [
            torch.autograd.grad(grad[..., k].sum(), point, create_graph=keep, retain_graph=True)[0]
            for k in range(grad.shape[-1])
        ]
    if not keep:
        point, grad = point.detach(), grad.detach()
    return point, grad, torch.stack(columns, -1)


class _MemberTerms(Messenger):
    """Sums every sample site's log density (a plate's subsampling scale
    removed), or with ``members_only`` only the sites inside the plate and
    those named in ``outside`` (sites outside it that depend on its members);
    a ``by_site`` dict, if given, gets each site's ``(inside, sum)``."""

    def __init__(self, plate: str, unscale: float, members_only=False, outside=frozenset(), by_site=None) -> None:
        super().__init__()
        self.plate, self.unscale, self.members_only, self.outside = plate, unscale, members_only, outside
        self.total, self.by_site = 0.0, by_site

    def _pyro_post_sample(self, msg) -> None:
        if site_is_subsample(msg):
            return
        inside = any(frame.name == self.plate for frame in msg["cond_indep_stack"])
        if self.members_only and not inside and msg["name"] not in self.outside:
            return
        log_p = scale_and_mask(msg["fn"].log_prob(msg["value"]), msg["scale"], msg["mask"])
        if inside:
            log_p = log_p * self.unscale
        log_p = log_p.sum()
        self.total = self.total + log_p
        if self.by_site is not None:
            self.by_site[msg["name"]] = (inside, log_p)


class LocalLaplace:
    """The log density of a plate's members given the globals, from the model.

    Runs ``model`` conditioned on the globals and on the locals of the
    members ``index`` (the plate's subsample), outside every handler, and sums
    the members' terms without the plate's subsampling scale.
    """

    def __init__(self, model, layout: LatentLayout) -> None:
        self.model, self.layout = model, layout
        self._outside_sites: frozenset | None = None  # sites outside the plate that depend on its members

    def log_density(
        self,
        global_values: dict[str, torch.Tensor],
        locals_: torch.Tensor,
        index: torch.Tensor,
        args,
        kwargs,
        members_only: bool = False,
        terms: _MemberTerms | None = None,
    ) -> torch.Tensor:
        """Sum over members (and draws) of ``h_i``; ``locals_`` is
        (..., B, 1, ..., 1, d) with the member dim at the plate's dim and
        ``global_values`` the globals' unconstrained values, batched alike.
        The terms outside the plate count too, or with ``members_only`` only
        those that depend on the members' locals (the rows of a plate of
        their own, say), not the globals' own. ``terms``: the messenger
        that sums them, if not the default one."""
        layout, plate = self.layout, self.layout.plate
        prefix = locals_.shape[: locals_.dim() - 1 + plate.dim]
        values = {name: layout.sites[name].transform(u) for name, u in global_values.items()}
        total = locals_.new_zeros(())
        for name, site in layout.sites.items():
            if site.local:
                u = locals_[..., layout.slices[name]].reshape(prefix + (len(index),) + site.unconstrained_shape[1:])
                values[name] = site.transform(u)
                total = total + site.transform.log_abs_det_jacobian(u, values[name]).sum()
        values[plate.name] = index
        if terms is None:
            outside = self._outside_sites or frozenset()
            terms = _MemberTerms(plate.name, len(index) / plate.size, members_only, outside)
        with (
            isolated(),
            pyro.validation_enabled(False),
            terms,
            IndexSelectMode(),
        ):  # the guide's run of the model validates these
            poutine.condition(self.model, data=values)(*args, **kwargs)
        return total + terms.total

    def _find_outside_sites(self, global_values, anchor, index, args, kwargs) -> frozenset:
        """The sites outside the plate whose log density depends on the members' locals."""
        by_site: dict = {}
        terms = _MemberTerms(self.layout.plate.name, 1.0, by_site=by_site)
        with torch.enable_grad():
            point = anchor.detach().requires_grad_(True)
            values = {k: v.detach() for k, v in global_values.items()}
            self.log_density(values, point, index, args, kwargs, terms=terms)
            return frozenset(
                name
                for name, (inside, log_p) in by_site.items()
                if not inside
                and log_p.requires_grad
                and torch.autograd.grad(log_p, point, retain_graph=True, allow_unused=True)[0] is not None
            )

    def gaussian(self, global_values, anchor, index, fallback_scale, args, kwargs):
        """``newton_gaussian`` of the members ``index`` from ``anchor``."""
        return newton_gaussian(
            lambda point: self.log_density(global_values, point, index, args, kwargs), anchor, fallback_scale
        )

    def marginal(self, global_values, chunks, anchors, fallback_scales, args, kwargs) -> torch.Tensor:
        """Laplace's approximation of ``log p(y, g)`` (up to a constant) at the
        globals' unconstrained values ``global_values`` (unbatched): for
        every chunk of members (indices ``chunks``, with their ``anchors`` and
        ``fallback_scales``), two Newton steps, then ``h_i(mu_i) - log|R_i|``
        summed; the globals' own terms and Jacobians once (a chunk's rows in a
        plate of their own count with the chunk).
        Differentiable in the globals. Exact for Gaussian random effects
        with a Gaussian likelihood (the marginal INLA and TMB maximise)."""
        total = sum(
            self.layout.sites[name].transform.log_abs_det_jacobian(u, self.layout.sites[name].transform(u)).sum()
            for name, u in global_values.items()
        )
        if self._outside_sites is None and len(chunks) > 1:  # one chunk counts every site
            self._outside_sites = self._find_outside_sites(global_values, anchors[0], chunks[0], args, kwargs)
        for k, (index, anchor, scale) in enumerate(zip(chunks, anchors, fallback_scales, strict=True)):
            density = functools.partial(
                self.log_density, global_values, index=index, args=args, kwargs=kwargs, members_only=k > 0
            )
            with torch.no_grad():
                anchor, _ = newton_gaussian(density, anchor, scale)
            mean, chol = newton_gaussian(density, anchor, scale)
            total = total + density(mean) - chol.diagonal(dim1=-2, dim2=-1).log().sum()
        return total

    @torch.no_grad()
    def quadratic(self, global_values, anchor, index, args, kwargs) -> bool:
        """Whether each member's log density is quadratic in its locals, so
        that the Newton Gaussian is their exact conditional posterior (a
        Gaussian likelihood on Gaussian random effects, centred or not): its
        Hessian blocks agree, to float rounding, at the anchor and one unit
        away, at the given globals and at globals half a unit away."""
        hessians = []
        for shift in (0.0, 0.5):
            values = {name: value + shift for name, value in global_values.items()}
            density = functools.partial(self.log_density, values, index=index, args=args, kwargs=kwargs)
            hessians += [_gradient_and_hessian(density, anchor + step)[2] for step in (0.0, 1.0)]
        first, second = hessians[0::2], hessians[1::2]
        if not all(torch.isfinite(h).all() for h in hessians):
            return False
        tolerance = 1e-4 * max(h.abs().amax() for h in hessians)  # float32 rounding
        return all(bool((a - b).abs().amax() <= tolerance) for a, b in zip(first, second, strict=True))

    def deterministic(self, global_values, anchor, index, args, kwargs) -> bool:
        """Whether the conditioned model draws no random numbers (every site it
        samples is one of the guide's) and gives a finite log density."""
        state = torch.get_rng_state()
        with torch.no_grad():
            value = self.log_density(global_values, anchor, index, args, kwargs)
        return bool(torch.equal(state, torch.get_rng_state()) and torch.isfinite(value))
