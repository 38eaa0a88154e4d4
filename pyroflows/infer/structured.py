"""The structured (plate-aware) form of `AutoFlow`:
the map from base draws to globals and members' locals, and the guide that
samples them. A mixin: `AutoFlow` owns the state
(the flows, the preconditioner, `MemberFlow`
and the `LocalLaplace` step)."""

from __future__ import annotations

from contextlib import ExitStack

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.distributions.util import sum_rightmost

__all__ = ["StructuredForm"]


class StructuredForm:
    """``q(globals) x prod_i q(l_i | globals, i)``: see `AutoFlow`."""

    def _member_shape(self, size: int, plate_dim: int) -> tuple[int, ...]:
        return (size,) + (1,) * (-plate_dim - 1) + (self._layout.local_dim,)

    def _globals(self, eps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Globals, their whitened values and log|det| for base draws ``eps`` (..., Dg)."""
        if not eps.shape[-1]:
            return eps, eps, eps.new_zeros(eps.shape[:-1])
        flow, affine = self.flow, self.affine  # each access registers the module's params with Pyro: once per call
        u = flow(eps)
        log_det = flow.log_abs_det_jacobian(eps, u)
        w = affine(u)
        log_det = log_det + affine.log_abs_det_jacobian(u, w)
        tril = self.preconditioner_scale_tril.detach()
        g = self.preconditioner_loc.detach() + w @ tril.T
        return g, w, log_det + tril.diagonal().abs().log().sum()

    def base_to_latent(self, eps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Flat unconstrained latents (..., D) and log|dz/d eps| for base draws ``eps`` (..., D)."""
        layout = self._layout
        eps_g, eps_l = layout.split(eps)
        g, w, log_det = self._globals(eps_g)
        if layout.plate is None:
            return layout.assemble(g, None), log_det
        if self._local_laplace is None:
            local, local_log_det = self.members(eps_l, w.unsqueeze(-2))
        else:
            local, local_log_det = self._all_members(eps_l, g, w)
        return layout.assemble(g, local), log_det + local_log_det.sum(-1)

    def _all_members(self, eps_l: torch.Tensor, g: torch.Tensor, w: torch.Tensor):
        """Locals (..., N, d) for every member, in the model's plate layout and
        in chunks of the plate's subsample size (the model needs one)."""
        if self._model_args is None:
            raise ValueError("call the guide (or sample_posterior) with the model's arguments first")
        plate, n = self._layout.plate, self._layout.plate.size
        batch, size = eps_l.shape[:-2], plate.subsample_size or n
        left = (-1,) + (1,) * self._plate_nesting
        g, w = g.reshape(left + g.shape[-1:]), w.reshape(left + w.shape[-1:])
        eps_l = eps_l.reshape((g.shape[0],) + eps_l.shape[-2:])
        values = self._global_values(g)
        locals_, log_dets = [], []
        for start in range(0, n, size):
            first = min(start, n - size)
            index = torch.arange(first, first + size, device=eps_l.device)
            shape = (g.shape[0],) + (1,) * (self._plate_nesting + plate.dim) + self._member_shape(size, plate.dim)
            local, log_det = self._locals(eps_l[:, index].reshape(shape), w, values, index, plate.dim)
            locals_.append(local.reshape(g.shape[0], size, -1)[:, start - first :])
            log_dets.append(log_det.reshape(g.shape[0], size)[:, start - first :])
        local, log_det = torch.cat(locals_, 1), torch.cat(log_dets, 1)
        return local.reshape(batch + local.shape[1:]), log_det.reshape(batch + log_det.shape[1:])

    def _locals(self, eps_l, w, global_values, index, plate_dim):
        """The member flow for members ``index`` (``eps_l`` in the plate's layout)."""
        members, gaussian = self.members, None
        if self._local_laplace is not None:
            shape = self._member_shape(len(index), plate_dim)
            anchor = members.loc[index].reshape(shape).expand(eps_l.shape)
            fallback = members.log_scale[index].exp().reshape(shape)
            args, kwargs = self._model_args
            gaussian = self._local_laplace.gaussian(global_values, anchor, index, fallback, args, kwargs)
        return members(eps_l, w, index, plate_dim, gaussian, exact=self._exact_locals)

    def _global_values(self, g: torch.Tensor) -> dict[str, torch.Tensor]:
        """Unconstrained value of each global site for globals ``g`` (..., Dg)."""
        layout = self._layout
        return {
            name: g[..., layout.slices[name]].reshape(g.shape[:-1] + s.unconstrained_shape)
            for name, s in layout.sites.items()
            if not s.local
        }

    def _structured_forward(self, *args, **kwargs):
        layout, plates = self._layout, self._create_plates(*args, **kwargs)
        plate = layout.plate
        zero = self.preconditioner_loc.new_zeros(())
        eps_g = zero.new_zeros((0,))
        if layout.global_dim:
            base = dist.Normal(zero, 1.0).expand([layout.global_dim]).to_event(1)
            eps_g = pyro.sample("_AutoFlow_globals", base, infer={"is_auxiliary": True})
        g, w, global_log_det = self._globals(eps_g)
        self._model_args = (args, kwargs)
        result, global_values = {}, self._global_values(g)
        for name, value in global_values.items():
            result[name] = self._delta(layout.sites[name], value, global_log_det, plates)
            global_log_det = 0.0
        with plates[plate.name] as index:
            base = dist.Normal(zero, 1.0).expand([layout.local_dim]).to_event(1)
            eps_l = pyro.sample("_AutoFlow_locals", base, infer={"is_auxiliary": True})
        local, local_log_det = self._locals(eps_l, w, global_values, index, plate.dim)
        prefix = local.shape[: local.dim() - 1 + plate.dim]
        for name, s in layout.sites.items():
            if s.local:
                shape = (len(index),) + s.unconstrained_shape[1:]
                value = local[..., layout.slices[name]].reshape(prefix + shape)
                result[name] = self._delta(s, value, local_log_det, plates)
                local_log_det = 0.0
        return result

    def _delta(self, site, unconstrained: torch.Tensor, log_det, plates):
        transform = site.transform
        value = transform(unconstrained)
        log_density = 0.0
        if poutine.get_mask() is not False:
            jacobian = transform.inv.log_abs_det_jacobian(value, unconstrained)
            log_density = sum_rightmost(jacobian, jacobian.dim() - value.dim() + site.event_dim) - log_det
        with ExitStack() as stack:
            for frame in site.cond_indep_stack:
                stack.enter_context(plates[frame.name])
            return pyro.sample(site.name, dist.Delta(value, log_density=log_density, event_dim=site.event_dim))
