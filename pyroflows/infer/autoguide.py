"""``AutoFlow``: a normalizing-flow autoguide for any Pyro model."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions.torch_transform import ComposeTransformModule
from pyro.distributions.transforms import LowerCholeskyAffine, biject_to
from pyro.infer.autoguide import AutoContinuous
from pyro.nn import PyroParam

from pyroflows import flows
from pyroflows.infer.latent import LatentSpace, init_to_mean_or_zero
from pyroflows.infer.warm_start import laplace
from pyroflows.transforms import ActNorm, LogDetEstimator, Spline, TriangularAffine

__all__ = ["AutoFlow", "PRESETS", "default_options"]

LARGE_LATENT_DIM = 500  # above this the Laplace warm start warns about its O(D^2) cost
PRESETS: dict[str, Callable] = {
    "nsf": flows.nsf,
    "iaf": flows.iaf,
    "realnvp": flows.realnvp,
    "nice": flows.nice,
    "resflow": flows.resflow,
    "ffjord": flows.ffjord,
}
EXACT_LOG_DET_MAX_DIM = 16  # resflow preset: exact log-det up to this latent size, Russian roulette above


def default_options(flow: str, latent_dim: int) -> dict:
    """The flow options :class:`AutoFlow` uses for ``latent_dim`` latents.

    ================  ==============================================
    option            default
    ================  ==============================================
    num_transforms    2 if D <= 10, else 3
    hidden_dims       (max(32, 4 D),) * 2, capped at 256 units
    count_bins (nsf)  8; the spline box is [-5, 5] (whitened space)
    nsf variant       autoregressive, IAF mode (sampling and the
                      density of its own samples in one pass)
    resflow log-det   exact if D <= 16, else Russian roulette
    ffjord            one continuous flow, dopri5, exact trace if
                      D <= 8, else Hutchinson
    ================  ==============================================
    """
    width = min(256, max(32, 4 * latent_dim))
    options: dict = {"num_transforms": 2 if latent_dim <= 10 else 3, "hidden_dims": (width, width)}
    if flow == "nsf":
        options.update(count_bins=8, bound=5.0, variant="autoregressive", mode="iaf")
    if flow == "ffjord":
        options = {"num_transforms": 1, "hidden_dims": (width, width)}
    if flow == "resflow":
        method = "exact" if latent_dim <= EXACT_LOG_DET_MAX_DIM else "roulette"
        options.update(log_det=LogDetEstimator(method), actnorm=False)
    return options


class AutoFlow(AutoContinuous):
    """Flow guide over all continuous latent sites of ``model``.

    The guide draws ``eps ~ N(0, I)``, pushes it through a flow (identity at
    initialisation) and a learned triangular affine map (identity at
    initialisation), then un-whitens with a fixed preconditioner: the Laplace
    approximation (MAP and inverse-Hessian Cholesky factor) of the posterior in
    unconstrained space. Constrained sites go through ``biject_to``. So at
    step 0 the guide is the Laplace approximation, and the optimiser works in
    whitened coordinates, which keeps badly scaled, correlated posteriors
    (coefficients in the thousands beside ones near 0.01) well conditioned.
    The prior is never sampled, so improper priors work.

    Args:
        model: a Pyro model.
        flow: a preset (``"nsf"``, ``"iaf"``, ``"realnvp"``, ``"nice"``, ``"resflow"``, ``"ffjord"``) or a
            callable ``latent_dim -> TransformModule``.
        warm_start: ``"laplace"`` (default) or ``None`` (preconditioner
            ``N(init, I)`` with the model at unconstrained zero).
        **flow_options: options for the preset, overriding
            :func:`default_options`.

    Example:
        >>> import pyro, pyro.distributions as dist
        >>> def model():
        ...     pyro.sample("x", dist.Normal(torch.zeros(2), 1.0).to_event(1))
        >>> guide = AutoFlow(model)
        >>> guide()["x"].shape
        torch.Size([2])
    """

    def __init__(
        self, model: Callable, flow: str | Callable = "nsf", *, warm_start: str | None = "laplace", **flow_options: Any
    ):
        if isinstance(flow, str) and flow not in PRESETS:
            raise ValueError(f"flow must be one of {sorted(PRESETS)} or a callable, got {flow!r}")
        if not isinstance(flow, str) and not callable(flow):
            raise TypeError(f"flow must be a preset name or a callable latent_dim -> transform, got {type(flow)}")
        if warm_start not in ("laplace", None):
            raise ValueError(f"warm_start must be 'laplace' or None, got {warm_start!r}")
        super().__init__(model, init_loc_fn=init_to_mean_or_zero)
        self.flow_spec = flow
        self.flow_options = flow_options
        self.warm_start = warm_start

    def _setup_prototype(self, *args, **kwargs):
        space = LatentSpace(self.model, *args, **kwargs)  # clear errors for discrete / no latents
        super()._setup_prototype(*args, **kwargs)
        if space.dim != self.latent_dim:
            raise RuntimeError(f"latent size mismatch: {space.dim} vs {self.latent_dim}")
        if self.warm_start == "laplace":
            if space.dim > LARGE_LATENT_DIM:
                warnings.warn(
                    f"Laplace warm start over {space.dim} latents costs {space.dim} Hessian-vector products and a "
                    f"{space.dim}x{space.dim} factorisation; pass warm_start=None to skip it",
                    stacklevel=3,
                )
            loc, scale_tril = laplace(space, *args, **kwargs)
        else:
            loc, scale_tril = space.init, torch.eye(space.dim, dtype=space.init.dtype)
        # Fixed preconditioner: stored as params (so it saves with the param
        # store) but always used detached, so it never receives gradients.
        self.preconditioner_loc = PyroParam(loc.detach())
        self.preconditioner_scale_tril = PyroParam(scale_tril.detach())
        self.flow = self._build_flow(self.latent_dim).to(loc.dtype)
        self.affine = TriangularAffine(self.latent_dim).to(loc.dtype)
        for name in ("flow", "affine"):  # take values already in the param store (after param_store.load)
            pyro.module(self._pyro_get_fullname(name), self._modules[name], update_module_params=True)

    def _build_flow(self, dim: int):
        if callable(self.flow_spec):
            return self.flow_spec(dim)
        if dim == 1:  # no coupling or autoregressive structure in 1-D: an elementwise spline
            return ComposeTransformModule([Spline(1, count_bins=16, bound=5.0)])
        options = {**default_options(self.flow_spec, dim), **self.flow_options}
        flow = PRESETS[self.flow_spec](dim, **options)
        for layer in flow.modules():  # no data to initialise ActNorm from: keep it at the identity
            if isinstance(layer, ActNorm):
                layer.initialized.fill_(True)
        return flow

    def get_base_dist(self):
        loc = self.preconditioner_loc
        return dist.Normal(torch.zeros_like(loc), torch.ones_like(loc)).to_event(1)

    def get_transform(self, *args, **kwargs):
        precondition = LowerCholeskyAffine(
            self.preconditioner_loc.detach(), self.preconditioner_scale_tril.detach(), cache_size=1
        )
        return dist.transforms.ComposeTransform([self.flow, self.affine, precondition])

    def _unconstrained_draws(self, num_samples: int) -> torch.Tensor:
        return self.get_posterior().sample((num_samples,))

    @torch.no_grad()
    def sample_posterior(self, num_samples: int, *args, **kwargs) -> dict[str, torch.Tensor]:
        """``num_samples`` draws of every latent site, (num_samples, *site shape)
        each (use :func:`pyroflows.diagnostics.draw` for deterministic sites too)."""
        if self.prototype_trace is None:
            self._setup_prototype(*args, **kwargs)
        draws = self._unconstrained_draws(num_samples)
        return {
            site["name"]: biject_to(site["fn"].support)(unconstrained)
            for site, unconstrained in self._unpack_latent(draws)
        }

    @torch.no_grad()
    def median(self, *args, num_samples: int = 4000, **kwargs):
        """Posterior medians of each latent site, estimated from ``num_samples`` draws."""
        return {k: v[0] for k, v in self.quantiles([0.5], *args, num_samples=num_samples, **kwargs).items()}

    @torch.no_grad()
    def quantiles(self, quantiles, *args, num_samples: int = 4000, **kwargs):
        """Posterior quantiles of each latent site, estimated from ``num_samples``
        draws (per coordinate in unconstrained space, then constrained; exact
        for elementwise constraints such as positive or unit interval)."""
        if self.prototype_trace is None:
            self._setup_prototype(*args, **kwargs)
        draws = self._unconstrained_draws(num_samples)
        q = torch.as_tensor(quantiles, dtype=draws.dtype)
        if q.dim() != 1 or (q < 0).any() or (q > 1).any():
            raise ValueError(f"quantiles must be a list of numbers in [0, 1], got {quantiles!r}")
        latents = torch.quantile(draws, q, dim=0)
        result: dict[str, list] = {}
        for latent in latents:
            for site, unconstrained in self._unpack_latent(latent):
                result.setdefault(site["name"], []).append(biject_to(site["fn"].support)(unconstrained))
        return {k: torch.stack(v) for k, v in result.items()}

    def extra_repr(self) -> str:
        dim = getattr(self, "latent_dim", None)
        return f"flow={self.flow_spec!r}, warm_start={self.warm_start!r}, latent_dim={dim}"
