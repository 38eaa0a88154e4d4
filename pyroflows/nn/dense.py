"""Fully connected conditioner for coupling layers."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

PARAMS_MAJOR_MIN = 8192  # output units below which the usual layout is cheaper


class DenseNN(nn.Module):
    """MLP mapping ``(*, in_features)`` (and an optional context) to ``(*, *out_shape)``.

    The last layer starts at zero, so a flow built on it starts at the identity.

    Args:
        in_features: size of the input.
        out_shape: shape of one output, e.g. ``(num_transformed, num_params)``.
        hidden_dims: widths of the hidden layers.
        context_dim: size of an optional context, concatenated to the input.
        activation: activation module class.
        params_major: with a 2-D ``out_shape`` ``(units, params)``, write the
            output parameter-first in memory (a ``(params, units, *)`` tensor seen
            as ``(*, units, params)``), the layout the spline kernel reads without a copy;
            small batches (under 8192 units in all) keep the usual layout.
    """

    def __init__(
        self,
        in_features: int,
        out_shape: Sequence[int],
        hidden_dims: Sequence[int] = (64, 64),
        context_dim: int | None = None,
        activation: type[nn.Module] = nn.ReLU,
        params_major: bool = False,
    ) -> None:
        super().__init__()
        self.out_shape = tuple(out_shape)
        self.context_dim = context_dim
        sizes = [in_features + (context_dim or 0), *hidden_dims]
        layers: list[nn.Module] = []
        for a, b in zip(sizes[:-1], sizes[1:], strict=True):
            layers += [nn.Linear(a, b), activation()]
        last = nn.Linear(sizes[-1], int(torch.Size(self.out_shape).numel()))
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        self.net = nn.Sequential(*layers, last)
        self.params_major = params_major and len(self.out_shape) == 2

    def forward(self, inputs: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        if context is not None:
            batch = torch.broadcast_shapes(inputs.shape[:-1], context.shape[:-1])
            inputs = torch.cat(
                [inputs.expand(*batch, inputs.shape[-1]), context.expand(*batch, context.shape[-1])], dim=-1
            )
        if not self.params_major or inputs.shape[:-1].numel() * self.out_shape[0] < PARAMS_MAJOR_MIN:
            out = self.net(inputs)
            return out.reshape(*out.shape[:-1], *self.out_shape)
        *hidden, last = self.net
        for layer in hidden:
            inputs = layer(inputs)
        return params_major_linear(inputs, last.weight, last.bias, self.out_shape)


def params_major_linear(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, out_shape) -> torch.Tensor:
    """``F.linear(h, weight, bias)`` as ``(*, units, params)``, computed as
    ``(params * units, N)`` by one matrix product with the rows reordered."""
    units, params = out_shape
    weight = weight.view(units, params, -1).transpose(0, 1).reshape(units * params, -1)
    bias = bias.view(units, params).T.reshape(-1, 1)
    out = torch.addmm(bias, weight, h.reshape(-1, h.shape[-1]).T)
    return out.view(params, units, -1).permute(2, 1, 0).reshape(*h.shape[:-1], units, params)
