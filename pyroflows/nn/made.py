"""MADE: masked autoencoder for distribution estimation (arXiv:1502.03509).

Output ``i`` depends only on inputs that come before ``i`` in ``order``; with
``num_residual_blocks > 0`` the hidden layers are masked residual blocks
(Durkan et al., arXiv:1906.04032, appendix).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from pyroflows.nn.dense import PARAMS_MAJOR_MIN, params_major_linear


class MaskedLinear(nn.Linear):
    """``nn.Linear`` whose weight is multiplied by a fixed 0/1 mask."""

    def __init__(self, in_features: int, out_features: int, mask: torch.Tensor) -> None:
        super().__init__(in_features, out_features)
        self.register_buffer("mask", mask.to(self.weight.dtype))

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return F.linear(inputs, self.weight * self.mask, self.bias)


def _hidden_degrees(width: int, input_dim: int, conditional: bool) -> torch.Tensor:
    """Degrees 1..D-1; with a context also 0 (units that see only the
    context), else the first output could not depend on the context."""
    if input_dim == 1 or conditional:
        return torch.arange(width) % input_dim
    return torch.arange(width) % (input_dim - 1) + 1


class MADE(nn.Module):
    """Autoregressive network ``(*, D) -> (*, D, num_params)``.

    The output layer starts at zero, so flows built on it start at the identity.

    Args:
        input_dim: ``D``.
        num_params: parameters produced per input element.
        hidden_dims: widths of the hidden layers (all equal when residual).
        context_dim: optional context size; the context feeds every hidden
            unit, and hidden units of degree 0 (context only) let it reach
            the first element's parameters too.
        num_residual_blocks: use this many masked residual blocks instead of a
            plain stack (then ``hidden_dims`` must hold one width).
        order: a permutation of ``range(D)``; default is the natural order.
        activation: activation module class.
        params_major: write the output parameter-first in memory (see
            `DenseNN`), the spline kernel's layout.
    """

    def __init__(
        self,
        input_dim: int,
        num_params: int,
        hidden_dims: Sequence[int] = (64, 64),
        context_dim: int | None = None,
        num_residual_blocks: int = 0,
        order: Sequence[int] | None = None,
        activation: type[nn.Module] = nn.ReLU,
        params_major: bool = False,
    ) -> None:
        super().__init__()
        self.params_major = params_major
        hidden_dims = list(hidden_dims)
        if not hidden_dims:
            raise ValueError("MADE needs at least one hidden layer")
        if num_residual_blocks and len(set(hidden_dims)) != 1:
            raise ValueError(f"residual MADE needs equal hidden widths, got {hidden_dims}")
        order_t = torch.arange(input_dim) if order is None else torch.as_tensor(order, dtype=torch.long)
        if sorted(order_t.tolist()) != list(range(input_dim)):
            raise ValueError(f"order must be a permutation of range({input_dim}), got {order_t.tolist()}")
        self.input_dim = input_dim
        self.num_params = num_params
        self.register_buffer("order", order_t)
        in_degrees = torch.empty(input_dim, dtype=torch.long)
        in_degrees[order_t] = torch.arange(1, input_dim + 1)

        def masked(d_in, d_out, strict=False):
            mask = (d_out[:, None] > d_in[None, :]) if strict else (d_out[:, None] >= d_in[None, :])
            return MaskedLinear(len(d_in), len(d_out), mask)

        degrees = [in_degrees] + [_hidden_degrees(w, input_dim, bool(context_dim)) for w in hidden_dims]
        self.input_layer = masked(degrees[0], degrees[1])
        self.context_layer = nn.Linear(context_dim, hidden_dims[0]) if context_dim else None
        blocks: list[nn.Module] = []
        if num_residual_blocks:
            for _ in range(num_residual_blocks):
                blocks.append(_MaskedResidualBlock(degrees[1], masked, activation))
        else:
            for d_in, d_out in zip(degrees[1:-1], degrees[2:], strict=True):
                blocks.append(nn.Sequential(activation(), masked(d_in, d_out)))
        self.blocks = nn.ModuleList(blocks)
        self.activation = activation()
        out_degrees = in_degrees.repeat_interleave(num_params)
        self.output_layer = masked(degrees[-1], out_degrees, strict=True)
        nn.init.zeros_(self.output_layer.weight)
        nn.init.zeros_(self.output_layer.bias)

    def forward(self, inputs: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        h = self.input_layer(inputs)
        if self.context_layer is not None and context is not None:
            h = h + self.context_layer(context)
        for block in self.blocks:
            h = block(h)
        h, last = self.activation(h), self.output_layer
        if self.params_major and h.shape[:-1].numel() * self.input_dim >= PARAMS_MAJOR_MIN:
            return params_major_linear(h, last.weight * last.mask, last.bias, (self.input_dim, self.num_params))
        out = last(h)
        return out.reshape(*out.shape[:-1], self.input_dim, self.num_params)


class _MaskedResidualBlock(nn.Module):
    def __init__(self, degrees: torch.Tensor, masked, activation) -> None:
        super().__init__()
        self.net = nn.Sequential(activation(), masked(degrees, degrees), activation(), masked(degrees, degrees))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.net(h)
