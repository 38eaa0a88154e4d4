"""Fully connected conditioner for coupling layers."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class DenseNN(nn.Module):
    """MLP mapping ``(*, in_features)`` (and an optional context) to ``(*, *out_shape)``.

    The last layer starts at zero, so a flow built on it starts at the identity.

    Args:
        in_features: size of the input.
        out_shape: shape of one output, e.g. ``(num_transformed, num_params)``.
        hidden_dims: widths of the hidden layers.
        context_dim: size of an optional context, concatenated to the input.
        activation: activation module class.
    """

    def __init__(
        self,
        in_features: int,
        out_shape: Sequence[int],
        hidden_dims: Sequence[int] = (64, 64),
        context_dim: int | None = None,
        activation: type[nn.Module] = nn.ReLU,
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

    def forward(self, inputs: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        if context is not None:
            batch = torch.broadcast_shapes(inputs.shape[:-1], context.shape[:-1])
            inputs = torch.cat(
                [inputs.expand(*batch, inputs.shape[-1]), context.expand(*batch, context.shape[-1])], dim=-1
            )
        out = self.net(inputs)
        return out.reshape(*out.shape[:-1], *self.out_shape)
