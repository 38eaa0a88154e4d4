"""Time-dependent networks for continuous flows."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from pyroflows.nn.context import concat_context
from pyroflows.nn.linearization import Linearization

__all__ = ["ConcatSquashLinear", "ConcatSquashMLP"]


class ConcatSquashLinear(nn.Module):
    """``(W h + b) * sigmoid(a t + c) + d t`` (FFJORD's concat-squash layer)."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.linear = nn.Linear(in_features, out_features)
        self.gate = nn.Linear(1, out_features)
        self.shift = nn.Linear(1, out_features, bias=False)

    def forward(self, h: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return F.linear(h, *self.gated(t))

    def gated(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The layer at time ``t`` as one affine map: ``(weight, bias)``."""
        t = t.reshape(1).to(self.linear.weight)
        gate = torch.sigmoid(self.gate(t))
        return self.linear.weight * gate[:, None], self.linear.bias * gate + self.shift(t)


_SLOPES = {  # activation -> its derivative from its output
    nn.Tanh: lambda out: 1 - out.square(),
    nn.Sigmoid: lambda out: out * (1 - out),
}


class ConcatSquashMLP(nn.Module):
    """Velocity field ``v(x, t, context)`` of concat-squash layers; the last
    layer starts at zero (identity flow). ``activation`` defaults to tanh,
    which trains markedly faster than softplus or ELU here (zero-centred; see
    ``benchmarks/free_form_2d.py``)."""

    def __init__(
        self,
        features: int,
        hidden_dims: Sequence[int] = (64, 64),
        context_dim: int | None = None,
        activation: type[nn.Module] = nn.Tanh,
    ) -> None:
        super().__init__()
        self.context_dim = context_dim
        self.activation = activation()
        sizes = [features + (context_dim or 0), *hidden_dims, features]
        self.layers = nn.ModuleList(ConcatSquashLinear(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=True))
        last = self.layers[-1]
        for p in (last.linear.weight, last.linear.bias, last.shift.weight):
            nn.init.zeros_(p)

    def forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        h = concat_context(x, context)
        for i, layer in enumerate(self.layers):
            h = layer(h, t)
            if i < len(self.layers) - 1:
                h = self.activation(h)
        return h

    def linearize(self, x, t, context=None) -> tuple[torch.Tensor, Linearization] | None:
        """``v(x, t)`` and its Jacobian in ``x`` (one pass; continuous flows take
        traces from it without double backward), or ``None`` for an activation
        whose slope is not known here."""
        slope = _SLOPES.get(type(self.activation))
        if slope is None:
            return None
        h, features = concat_context(x, context), x.shape[-1]
        weights, slopes = [], []
        for i, layer in enumerate(self.layers):
            weight, bias = layer.gated(t)
            weights.append(weight)
            h = F.linear(h, weight, bias)
            if i < len(self.layers) - 1:
                h = self.activation(h)
                slopes.append(slope(h))
        weights[0] = weights[0][:, :features]
        return h, Linearization(weights, slopes)
