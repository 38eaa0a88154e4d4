"""``MemberFlow``: one conditional flow shared by every member of a plate.

For member ``i`` with base draw ``eps_i`` (d,), whitened global latents
``w`` and a learned embedding ``e_i``, the context is ``c_i = [w, e_i]`` and

$$
l_i = m_i + s_i \\odot \\big(b(c_i) + L(c_i)\\, f(\\epsilon_i; c_i)\\big)
$$

with ``f`` a conditional spline autoregressive flow (IAF mode), ``b, L``
(shift and lower-triangular matrix with a positive diagonal) from an MLP of
the context, and ``m_i, s_i`` free per-member location and scale (the
mean-field warm start). Identity at initialisation: ``l_i = m_i + s_i eps_i``.
Given a Gaussian ``N(mu_i, (R_i R_i^T)^{-1})`` per member (from
`local_laplace`), ``m_i + s_i u`` is replaced by
``mu_i + R_i^{-T} u``: the flow then corrects that Gaussian.

Parameters: ``N (2 d + E)`` for the members plus a fixed number for the
networks, so cost and memory grow linearly in the number of members ``N``,
and a step that subsamples ``B`` members touches only their rows.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from pyroflows.infer.amortized import conditional_spline_flow
from pyroflows.infer.small_linalg import solve_lower_transpose

__all__ = ["MemberFlow"]


def _mlp(in_dim: int, hidden_dims: Sequence[int], out_dim: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for width in hidden_dims:
        layers += [nn.Linear(in_dim, width), nn.ReLU()]
        in_dim = width
    last = nn.Linear(in_dim, out_dim)
    nn.init.zeros_(last.weight)
    nn.init.zeros_(last.bias)
    return nn.Sequential(*layers, last)


class MemberFlow(nn.Module):
    """``q(l_i | g, i)`` for all members ``i`` of a plate (see the module doc).

    Args:
        num_members: ``N``, the plate's full size.
        local_dim: ``d``, unconstrained local latents per member.
        global_dim: size of the whitened global latents in the context.
        embedding_dim: ``E``, the learned per-member embedding.
        hidden_dims: widths of the context MLP and of each flow layer's MADE.
        num_transforms: conditional spline layers (0: a conditional Gaussian).
        count_bins, bound: spline bins and box ``[-bound, bound]``.
    """

    def __init__(
        self,
        num_members: int,
        local_dim: int,
        global_dim: int,
        embedding_dim: int = 8,
        hidden_dims: Sequence[int] = (32, 32),
        num_transforms: int = 1,
        count_bins: int = 8,
        bound: float = 5.0,
    ) -> None:
        super().__init__()
        self.local_dim, self.global_dim = local_dim, global_dim
        self.loc = nn.Parameter(torch.zeros(num_members, local_dim))
        self.log_scale = nn.Parameter(torch.zeros(num_members, local_dim))
        self.embedding = nn.Parameter(torch.randn(num_members, embedding_dim))
        context_dim = global_dim + embedding_dim
        rows, cols = torch.tril_indices(local_dim, local_dim, -1)
        scatter = torch.zeros(len(rows), local_dim * local_dim)  # lower entries -> the flat (d, d) matrix
        scatter[torch.arange(len(rows)), rows * local_dim + cols] = 1.0
        self.register_buffer("scatter", scatter, persistent=False)
        self.head = _mlp(context_dim, hidden_dims, 2 * local_dim + len(rows))
        self.flow = conditional_spline_flow(local_dim, context_dim, num_transforms, hidden_dims, count_bins, bound)

    @torch.no_grad()
    def set_members(self, loc: torch.Tensor, scale: torch.Tensor) -> None:
        """Set the per-member location and scale (N, d) (a warm start)."""
        self.loc.copy_(loc)
        self.log_scale.copy_(scale.clamp(min=1e-6).log())

    def forward(
        self,
        eps: torch.Tensor,
        whitened: torch.Tensor,
        index: torch.Tensor | None = None,
        plate_dim: int = -1,
        gaussian: tuple[torch.Tensor, torch.Tensor] | None = None,
        exact: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Locals and log|det| for base draws ``eps``.

        ``eps`` has its member dim at batch dim ``plate_dim`` (so it lines up
        with a Pyro plate): (..., B, 1, ..., 1, d); ``whitened`` (..., Dg)
        broadcasts against its batch dims; ``index`` (B,) names the members
        (``None``: all). ``gaussian``: a per-draw ``(mean, R)`` (precision
        ``R R^T``, from `newton_gaussian`)
        that replaces the free location and scale: ``l = mean + R^{-T} v``;
        with ``exact`` (that Gaussian is the exact conditional) ``v = eps``: the
        networks have nothing to correct and are skipped.
        Returns locals of ``eps``'s shape and log|det| of its batch shape.
        """

        def rows(param: torch.Tensor) -> torch.Tensor:  # the members' rows, member dim at plate_dim
            param = param if index is None else param[index]
            return param.reshape(param.shape[:1] + (1,) * (-plate_dim - 1) + param.shape[1:])

        if exact and gaussian is not None:
            mean, chol = gaussian
            return mean + solve_lower_transpose(chol, eps), -chol.diagonal(dim1=-2, dim2=-1).log().sum(-1)
        embedding = rows(self.embedding)
        batch = torch.broadcast_shapes(eps.shape[:-1], whitened.shape[:-1], embedding.shape[:-1])
        parts = (whitened.expand(batch + whitened.shape[-1:]), embedding.expand(batch + embedding.shape[-1:]))
        v, log_det = self._standard(eps.expand(batch + eps.shape[-1:]), torch.cat(parts, -1))
        if gaussian is None:  # the free location and scale (unused, so not gathered, with a Gaussian)
            log_scale = rows(self.log_scale)
            return rows(self.loc) + log_scale.exp() * v, log_det + log_scale.sum(-1)
        mean, chol = gaussian
        v = solve_lower_transpose(chol, v)
        return mean + v, log_det - chol.diagonal(dim1=-2, dim2=-1).log().sum(-1)

    def _standard(self, u: torch.Tensor, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``b(c) + L(c) f(u; c)`` and its log|det|."""
        log_det = u.new_zeros(u.shape[:-1])
        if self.flow is not None:
            conditioned = self.flow.condition(context)
            v = conditioned(u)
            log_det = log_det + conditioned.log_abs_det_jacobian(u, v)
            u = v
        head = self.head(context)
        d = self.local_dim
        shift, log_diag, lower = head[..., :d], head[..., d : 2 * d], head[..., 2 * d :]
        v = shift + log_diag.exp() * u
        if lower.shape[-1]:
            matrix = (lower @ self.scatter).unflatten(-1, (d, d))
            v = v + (matrix * u.unsqueeze(-2)).sum(-1)
        return v, log_det + log_diag.sum(-1)
