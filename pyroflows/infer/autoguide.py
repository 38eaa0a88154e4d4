"""``AutoFlow``: a normalizing-flow autoguide for any Pyro model."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.distributions.torch_transform import ComposeTransformModule
from pyro.distributions.transforms import LowerCholeskyAffine
from pyro.infer.autoguide import AutoContinuous, AutoGuide
from pyro.nn import PyroParam

from pyroflows.flows import PRESETS, default_options, latent_flow
from pyroflows.infer.guide_transform import GuideTransform
from pyroflows.infer.latent import LatentSpace, check_continuous, init_to_mean_or_zero, isolated, max_plate_nesting
from pyroflows.infer.layout import LatentLayout, members_interact
from pyroflows.infer.local_laplace import MAX_LOCAL_DIM, LocalLaplace
from pyroflows.infer.members import MemberFlow
from pyroflows.infer.structured import StructuredForm
from pyroflows.infer.warm_start import gaussian_warm_start, laplace, marginal_mode, mean_field_vector
from pyroflows.transforms import TriangularAffine

__all__ = ["AutoFlow", "PRESETS", "default_options"]

LAPLACE_MAX_DIM = 500  # above this the joint warm start skips the O(D^2) Laplace candidates
WARM_STARTS = ("auto", "laplace", "mean_field", None)
STRUCTURES = ("auto", "plates", "joint")
CONDITIONALS = ("laplace", "learned")
SAMPLE_CHUNK = 256  # draws per pass when the locals need the model (bounds memory)


class AutoFlow(StructuredForm, AutoContinuous):
    """Flow guide over all continuous latent sites of ``model``.

    **Joint form** (models without plated latents): the guide draws
    ``eps ~ N(0, I)``, pushes it through a flow and a learned triangular
    affine map (both the identity at initialisation), then un-whitens with a
    fixed preconditioner: a Gaussian warm start in unconstrained space.
    Constrained sites go through ``biject_to``. The optimiser thus works in
    whitened coordinates, which keeps badly scaled, correlated posteriors
    well conditioned. The prior is never sampled, so improper priors work.

    **Structured form** (latents inside one plate, e.g. one intercept per
    group): ``q(globals) prod_i q(local_i | globals, i)``, the joint form over
    the globals and one `MemberFlow` shared by
    the plate's members, conditioned on the globals and a learned per-member
    embedding. It is exact for hierarchical models (the posterior factorises
    the same way), costs time and parameters linear in the number of
    members, and subsamples when the model's plate does. Nested plates,
    latents in two plates, or members whose terms interact fall back to the
    joint form, with a warning. With ``conditional="laplace"`` (default) the
    member flow starts from a Gaussian computed for every draw of the
    globals by one Newton step on the member's log density
    (`local_laplace`): exact for Gaussian random
    effects with a Gaussian likelihood, Laplace's approximation otherwise;
    ``"learned"``: a free per-member location and scale instead (cheaper per
    step, less accurate on the globals).

    **Warm start** (``"auto"``): joint form: the best by ELBO of the Laplace
    approximation from the prior mean, Laplace from two prior draws and a
    300-step mean-field fit, so a degenerate Laplace (a group scale at 0) or
    a local optimum (ODE likelihoods) cannot make it worse; structured form:
    the mean-field fit. ``"laplace"``: Laplace from the prior mean only;
    ``"mean_field"``; ``None``: ``N(init, I)``. State loaded before the
    first call (``load_state_dict``, the param store) is used as it is.

    Args:
        model: a Pyro model.
        flow: a preset (``"nsf"``, ``"iaf"``, ``"realnvp"``, ``"nice"``, ``"resflow"``, ``"ffjord"``) or a
            callable ``latent_dim -> TransformModule`` (for the globals in the structured form).
        warm_start: ``"auto"``, ``"laplace"``, ``"mean_field"`` or ``None``.
        structure: ``"auto"`` (structured where the model allows), ``"plates"`` (required) or ``"joint"``.
        embedding_dim: per-member embedding size (structured form).
        local_transforms: conditional spline layers of the member flow (structured form).
        local_hidden_dims: widths of the member flow's networks.
        conditional: ``"laplace"`` or ``"learned"``: the member flow's Gaussian (structured form; ``"laplace"``
            needs at most 16 locals per member and a model that samples no site the guide does not see).
        create_plates: as Pyro's autoguides: ``(*args, **kwargs) -> plate(s)`` with the model's subsample
            indices (a plate whose members the model chooses, e.g. each data-parallel process's own).
        **flow_options: options for the preset, overriding `default_options`.

    Examples:
        >>> import pyro, pyro.distributions as dist
        >>> def model():
        ...     pyro.sample("x", dist.Normal(torch.zeros(2), 1.0).to_event(1))
        >>> guide = AutoFlow(model)
        >>> guide()["x"].shape
        torch.Size([2])
    """

    def __init__(
        self,
        model: Callable,
        flow: str | Callable = "nsf",
        *,
        warm_start: str | None = "auto",
        structure: str = "auto",
        embedding_dim: int = 8,
        local_transforms: int = 1,
        local_hidden_dims: tuple[int, ...] = (32, 32),
        conditional: str = "laplace",
        create_plates: Callable | None = None,
        **flow_options: Any,
    ):
        if isinstance(flow, str) and flow not in PRESETS:
            raise ValueError(f"flow must be one of {sorted(PRESETS)} or a callable, got {flow!r}")
        if not isinstance(flow, str) and not callable(flow):
            raise TypeError(f"flow must be a preset name or a callable latent_dim -> transform, got {type(flow)}")
        if warm_start not in WARM_STARTS:
            raise ValueError(f"warm_start must be one of {WARM_STARTS}, got {warm_start!r}")
        if structure not in STRUCTURES:
            raise ValueError(f"structure must be one of {STRUCTURES}, got {structure!r}")
        if conditional not in CONDITIONALS:
            raise ValueError(f"conditional must be one of {CONDITIONALS}, got {conditional!r}")
        super().__init__(model, init_loc_fn=init_to_mean_or_zero)
        self.create_plates = create_plates  # as Pyro's AutoGuide: plates with the model's subsample indices
        self.flow_spec, self.flow_options = flow, flow_options
        self.warm_start, self.structure = warm_start, structure
        self.member_options = {"embedding_dim": embedding_dim, "num_transforms": local_transforms}
        self.member_options["hidden_dims"] = tuple(local_hidden_dims)
        self.conditional = conditional
        self._pending_state: dict | None = None
        self._local_laplace: LocalLaplace | None = None
        self._exact_locals = False  # the Newton Gaussian is the locals' exact conditional: no member networks
        self._model_args: tuple | None = None

    # ---- set-up -------------------------------------------------------------------------------------------------

    def _setup_prototype(self, *args, **kwargs):  # one frame deep: the warnings' stacklevels count on it
        try:
            with isolated():
                AutoGuide._setup_prototype(self, *args, **kwargs)
                sites = list(self.prototype_trace.iter_stochastic_nodes())
                for name, site in sites:
                    check_continuous(name, site["fn"])
                if not sites:
                    raise ValueError("the model has no latent sample sites: there is nothing to infer")
                layout = self._layout = LatentLayout(sites, self.structure)
                space = None if layout.subsampled else LatentSpace(self.model, *args, **kwargs)
                if layout.plate is not None and space is not None and members_interact(space, layout, args, kwargs):
                    layout.disable_plate(f"the log density couples members of plate {layout.plate.name!r}")
                self._check_structure(layout)
                self._unconstrained_shapes = {n: s.unconstrained_shape for n, s in layout.sites.items()}
                self._cond_indep_stacks = {n: s.cond_indep_stack for n, s in layout.sites.items()}
                self.latent_dim = layout.dim
                dtype = sites[0][1]["value"].dtype
                reload = self._pyro_get_fullname("preconditioner_loc") in pyro.get_param_store()
                self._build(layout, dtype)  # takes values already in the param store
                loaded = self._pending_state is not None
                if loaded:
                    state, self._pending_state = self._pending_state, None
                    super().load_state_dict(state)
                elif not reload:
                    self._warm_start(layout, space, dtype, args, kwargs)
                warm = not loaded and not reload and self.warm_start is not None  # loading never re-fits
                self._plate_nesting = _model_plate_nesting(self.model, self.prototype_trace, args, kwargs)
                self._model_args = (args, kwargs)
                self._local_laplace = self._make_local_laplace(layout, args, kwargs)
                if warm and self._local_laplace is not None:
                    self._marginal_warm_start(layout, args, kwargs)
        except BaseException:
            self.prototype_trace = None  # a later call sets up again and shows the same error
            raise

    def _make_local_laplace(self, layout: LatentLayout, args, kwargs) -> LocalLaplace | None:
        if layout.plate is None or self.conditional != "laplace" or layout.local_dim > MAX_LOCAL_DIM:
            return None
        laplace = LocalLaplace(self.model, layout)
        plate = layout.plate
        index = torch.arange(plate.subsample_size or plate.size)
        with torch.no_grad():
            anchor = self.members.loc[index].reshape(self._member_shape(len(index), plate.dim))
            values = self._global_values(self.preconditioner_loc.detach())
        if laplace.deterministic(values, anchor, index, args, kwargs):
            self._exact_locals = laplace.quadratic(values, anchor, index, args, kwargs)
            return laplace
        warnings.warn(
            "AutoFlow: the model, given the guide's latents, still draws random numbers (a site hidden by "
            "poutine.block?) or has a non-finite log density at the warm start; the locals' Gaussian is learned "
            "(conditional='learned') instead of a Newton step",
            stacklevel=4,
        )
        return None

    def _marginal_warm_start(self, layout: LatentLayout, args, kwargs) -> None:
        """Move the globals' preconditioner to the mode of their Laplace-marginal
        density (every member's locals integrated out by Newton steps, all
        members in chunks of the subsample size) and its scale to the inverse
        Hessian there; keep the mean-field start if that fails."""
        plate, members = layout.plate, self.members
        chunks = list(torch.arange(plate.size).split(plate.subsample_size or plate.size))
        with torch.no_grad():
            shapes = [self._member_shape(len(index), plate.dim) for index in chunks]
            anchors = [members.loc[i].reshape(shape) for i, shape in zip(chunks, shapes, strict=True)]
            scales = [members.log_scale[i].exp().reshape(shape) for i, shape in zip(chunks, shapes, strict=True)]

        def negative(g: torch.Tensor) -> torch.Tensor:
            values = self._global_values(g)
            return -self._local_laplace.marginal(values, chunks, anchors, scales, args, kwargs)

        start = self.preconditioner_loc.detach().clone()
        problem = marginal_mode(negative, start)
        if isinstance(problem, str):
            warnings.warn(f"AutoFlow warm start: {problem}; keeping the mean-field start", stacklevel=5)
            return
        loc, scale_tril = problem
        self.preconditioner_loc = PyroParam(loc)
        self.preconditioner_scale_tril = PyroParam(scale_tril)

    def _check_structure(self, layout: LatentLayout) -> None:
        plated = any(s.cond_indep_stack for s in layout.sites.values())
        if layout.plate is None and (self.structure == "plates" or layout.subsampled):
            raise ValueError(f"AutoFlow cannot use the structured (plate) form here: {layout.joint_reason}")
        if layout.plate is None and plated and self.structure == "auto":
            warnings.warn(f"AutoFlow: one joint flow over all latents, since {layout.joint_reason}", stacklevel=4)

    def _build(self, layout: LatentLayout, dtype: torch.dtype) -> None:
        dim = layout.global_dim
        self.preconditioner_loc = PyroParam(torch.zeros(dim, dtype=dtype))
        self.preconditioner_scale_tril = PyroParam(torch.eye(dim, dtype=dtype))
        self.flow = self._build_flow(dim).to(dtype) if dim else ComposeTransformModule([])
        self.affine = TriangularAffine(max(dim, 1)).to(dtype)
        names = ["flow", "affine"]
        if layout.plate is not None:
            self.members = MemberFlow(layout.plate.size, layout.local_dim, dim, **self.member_options).to(dtype)
            names.append("members")
        for name in names:  # take values already in the param store (after param_store.load)
            pyro.module(self._pyro_get_fullname(name), self._modules[name], update_module_params=True)
            _keep_state_in_param_store(self._pyro_get_fullname(name), self._modules[name])

    def _build_flow(self, dim: int):
        if callable(self.flow_spec):
            return self.flow_spec(dim)
        options = {} if dim == 1 else {**default_options(self.flow_spec, dim), **self.flow_options}
        return latent_flow(self.flow_spec, dim, **options)

    def _warm_start(self, layout: LatentLayout, space: LatentSpace | None, dtype, args, kwargs) -> None:
        glob = layout.global_index
        mean_field_only = layout.plate is not None or (self.warm_start == "auto" and layout.dim > LAPLACE_MAX_DIM)
        if self.warm_start is None:
            loc = space.init if space is not None else torch.zeros(layout.dim, dtype=dtype)
            scale = torch.ones(layout.dim, dtype=dtype)
            tril = torch.diag(scale[glob])
        elif self.warm_start == "mean_field" or mean_field_only:
            # a Newton step per member makes the locals' start unimportant: a shorter fit for the globals
            steps = 150 if layout.plate is not None and self.conditional == "laplace" else 300
            loc, scale = mean_field_vector(self.model, layout.sites, args, kwargs, dtype, steps, self.create_plates)
            tril = torch.diag(scale[glob])
        elif self.warm_start == "laplace":
            loc, tril = laplace(space, *args, **kwargs)
            scale = tril.diagonal()
        else:
            best, candidates = gaussian_warm_start(space, self.model, args, kwargs)
            loc, tril, scale = best.loc, best.scale_tril, best.scale_tril.diagonal()
            self._report_warm_start(best, candidates)
        self.preconditioner_loc = PyroParam(loc[glob].detach().clone())
        self.preconditioner_scale_tril = PyroParam(tril.detach().clone())
        if layout.plate is not None:
            _, local_loc = layout.split(loc)
            _, local_scale = layout.split(scale)
            self.members.set_members(local_loc, local_scale)

    @staticmethod
    def _report_warm_start(best, candidates) -> None:
        first = candidates[0]
        if best is not first and first.problem is not None:
            warnings.warn(
                f"AutoFlow warm start: the Laplace approximation is unreliable ({first.problem}); "
                f"starting from the {best.name} (ELBO {best.elbo:.4g} against {first.elbo:.4g})",
                stacklevel=5,
            )

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """Load state; before the first call the guide keeps it and uses it
        at set-up (no warm start is run)."""
        if self.prototype_trace is None:
            self._pending_state = dict(state_dict)
            return torch.nn.modules.module._IncompatibleKeys([], [])
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    # ---- the map from base draws to latents ----------------------------------------------------------------------

    def get_base_dist(self):
        zero = torch.zeros(self.latent_dim, dtype=self.preconditioner_loc.dtype, device=self.preconditioner_loc.device)
        return dist.Normal(zero, torch.ones_like(zero)).to_event(1)

    def get_transform(self, *args, **kwargs):
        if self._layout.plate is None:
            precondition = LowerCholeskyAffine(
                self.preconditioner_loc.detach(), self.preconditioner_scale_tril.detach(), cache_size=1
            )
            return dist.transforms.ComposeTransform([self.flow, self.affine, precondition])
        return GuideTransform(self.base_to_latent)

    # ---- the guide ----------------------------------------------------------------------------------------------

    def forward(self, *args, **kwargs):
        if self.prototype_trace is None:
            self._setup_prototype(*args, **kwargs)
        if self._layout.plate is None:
            return super().forward(*args, **kwargs)
        return self._structured_forward(*args, **kwargs)

    # ---- posterior summaries ------------------------------------------------------------------------------------

    def _unconstrained_draws(self, num_samples: int) -> torch.Tensor:
        eps = self.get_base_dist().sample((num_samples,))
        if self._local_laplace is None:
            return self.base_to_latent(eps)[0]
        return torch.cat([self.base_to_latent(chunk)[0] for chunk in eps.split(SAMPLE_CHUNK)])

    def _ready(self, args, kwargs) -> None:
        if self.prototype_trace is None:
            self._setup_prototype(*args, **kwargs)
        elif args or kwargs:
            self._model_args = (args, kwargs)

    @property
    def layout(self) -> LatentLayout:
        """Where each latent sits in the flat vector, and the plate of the locals (after the first call)."""
        return self._layout

    def constrained_values(self, latents: torch.Tensor) -> dict[str, torch.Tensor]:
        """Each site's constrained value, (..., *site shape), for flat unconstrained latents (..., D)."""
        batch = latents.shape[:-1]
        return {s.name: s.transform(u) for s, u in self._layout.unpack(latents, batch)}

    @torch.no_grad()
    def sample_posterior(self, num_samples: int, *args, **kwargs) -> dict[str, torch.Tensor]:
        """``num_samples`` draws of every latent site, (num_samples, *site shape)
        each, plates at full size (use `pyroflows.diagnostics.draw` for deterministic sites too)."""
        self._ready(args, kwargs)
        return self.constrained_values(self._unconstrained_draws(num_samples))

    @torch.no_grad()
    def median(self, *args, num_samples: int = 4000, **kwargs):
        """Posterior medians of each latent site, estimated from ``num_samples`` draws."""
        return {k: v[0] for k, v in self.quantiles([0.5], *args, num_samples=num_samples, **kwargs).items()}

    @torch.no_grad()
    def quantiles(self, quantiles, *args, num_samples: int = 4000, **kwargs):
        """Posterior quantiles of each latent site, estimated from ``num_samples``
        draws (per coordinate in unconstrained space, then constrained; exact
        for elementwise constraints such as positive or unit interval)."""
        q = torch.as_tensor(quantiles)
        if q.dim() != 1 or (q < 0).any() or (q > 1).any():
            raise ValueError(f"quantiles must be a list of numbers in [0, 1], got {quantiles!r}")
        self._ready(args, kwargs)
        draws = self._unconstrained_draws(num_samples)
        return self.constrained_values(torch.quantile(draws, q.to(draws.dtype), dim=0))

    def extra_repr(self) -> str:
        dim = getattr(self, "latent_dim", None)
        layout = getattr(self, "_layout", None)
        form = "structured" if layout is not None and layout.plate is not None else "joint"
        form += " (exact Gaussian locals)" if self._exact_locals else ""
        return f"flow={self.flow_spec!r}, warm_start={self.warm_start!r}, latent_dim={dim}, form={form}"


def _keep_state_in_param_store(name: str, module: torch.nn.Module) -> None:
    """Put the state buffers of ``module``'s layers that have one (the
    spectral-norm vectors of residual flows) in Pyro's param store beside the
    parameters, sharing their memory, so a param-store save and load restores
    them; values already in the store (after a load) are copied in."""
    store = pyro.get_param_store()
    for path, layer in module.named_modules():
        if not hasattr(layer, "keep_state_current"):
            continue
        for buffer_name, buffer in layer.named_buffers(recurse=False):
            key = f"{name}$$${path}.{buffer_name}" if path else f"{name}$$${buffer_name}"
            if key in store:
                with torch.no_grad():
                    buffer.copy_(store[key])
            store[key] = buffer.detach()  # an alias: a later save sees the current values
        layer.restore_state()
        layer.keep_state_current()


def _model_plate_nesting(model, prototype, args, kwargs) -> int:
    """The plate dims the whole model uses, observation plates included
    (Pyro's prototype trace hides observed sites and their plates)."""
    with torch.no_grad(), poutine.block():
        trace = poutine.trace(poutine.replay(model, trace=prototype)).get_trace(*args, **kwargs)
    return max(max_plate_nesting(trace), max_plate_nesting(prototype))
