"""Velocity networks ``v(x, t, context)`` for flow matching.

Both take ``x`` of shape ``(*batch, *event)``, a time ``t`` that is a scalar
or has the batch shape, and an optional ``context`` of shape
``(*batch, context_dim)``.

Examples:
    >>> net = TimeMLP(2, hidden_dims=(16, 16))
    >>> net(torch.zeros(5, 2), torch.rand(5)).shape
    torch.Size([5, 2])
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["TimeEmbedding", "TimeMLP", "UNet8"]


class TimeEmbedding(nn.Module):
    """``t`` itself, then ``[cos(2 pi k t), sin(2 pi k t)]`` for ``k = 1..frequencies`` (none for 0)."""

    def __init__(self, frequencies: int = 4) -> None:
        super().__init__()
        self.register_buffer("freqs", 2 * math.pi * torch.arange(1, frequencies + 1, dtype=torch.float32))
        self.dim = 2 * frequencies + 1

    def forward(self, t: torch.Tensor, batch_shape: torch.Size) -> torch.Tensor:
        t = torch.as_tensor(t, dtype=self.freqs.dtype, device=self.freqs.device).expand(batch_shape)[..., None]
        if not len(self.freqs):
            return t
        angles = t * self.freqs
        return torch.cat([t, angles.cos(), angles.sin()], -1)


def _conditioning(embed: TimeEmbedding, t, batch: torch.Size, context, like: torch.Tensor) -> list[torch.Tensor]:
    """``[time features, context]`` with batch shape ``batch``, in ``like``'s dtype."""
    t = torch.as_tensor(t)
    if t.dim() and t.shape != batch:
        raise ValueError(f"t must be a scalar or have the batch shape {tuple(batch)}, got {tuple(t.shape)}")
    parts = [embed(t, batch).to(like)]
    if context is not None:
        parts.append(context.expand(*batch, context.shape[-1]).to(like))
    return parts


class TimeMLP(nn.Module):
    """MLP on ``[x, time features, context]`` with SiLU activations (vector data).

    ``frequencies = 0`` (default) feeds ``t`` itself: smooth in time, which on the
    2-D benchmarks gave lower W2 than Fourier features (``frequencies = 4``:
    5-seed means on checkerboard / OT 0.367 vs 0.406, 2spirals / OT 0.241 vs 0.260)."""

    def __init__(
        self,
        input_dim: int,
        hidden_dims: Sequence[int] = (64, 64, 64),
        context_dim: int | None = None,
        frequencies: int = 0,
    ) -> None:
        super().__init__()
        self.input_dim, self.context_dim = input_dim, context_dim
        self.embed = TimeEmbedding(frequencies)
        sizes = [input_dim + self.embed.dim + (context_dim or 0), *hidden_dims]
        layers: list[nn.Module] = []
        for a, b in zip(sizes[:-1], sizes[1:], strict=True):
            layers += [nn.Linear(a, b), nn.SiLU()]
        self.net = nn.Sequential(*layers, nn.Linear(sizes[-1], input_dim))

    def forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        batch = x.shape[:-1] if context is None else torch.broadcast_shapes(x.shape[:-1], context.shape[:-1])
        parts = [x.expand(*batch, x.shape[-1]), *_conditioning(self.embed, t, batch, context, x)]
        return self.net(torch.cat(parts, -1))


class _Block(nn.Module):
    """Two 3x3 convolutions with GroupNorm and SiLU; time/context shift the channels."""

    def __init__(self, cin: int, cout: int, cond_dim: int) -> None:
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(cin, cout, 3, padding=1), nn.Conv2d(cout, cout, 3, padding=1)
        self.norm1, self.norm2 = nn.GroupNorm(min(8, cout), cout), nn.GroupNorm(min(8, cout), cout)
        self.cond = nn.Linear(cond_dim, cout)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        h = nn.functional.silu(self.norm1(self.conv1(x)))
        h = h + self.cond(cond)[..., None, None]
        h = nn.functional.silu(self.norm2(self.conv2(h)))
        return h + self.skip(x)


class UNet8(nn.Module):
    """A small U-Net for ``(channels, 8, 8)`` images: 8x8 -> 4x4 -> 2x2 and back, with skips.

    Returns ``(out_channels, 8, 8)`` (default: ``channels``); the output layer is
    zero-initialised. Batch dimensions beyond one are flattened and restored."""

    def __init__(
        self,
        channels: int = 1,
        width: int = 32,
        context_dim: int | None = None,
        frequencies: int = 8,
        out_channels: int | None = None,
    ) -> None:
        super().__init__()
        self.channels, self.context_dim = channels, context_dim
        self.out_channels = out_channels or channels
        self.embed = TimeEmbedding(frequencies)
        cond_dim = 4 * width
        self.cond = nn.Sequential(
            nn.Linear(self.embed.dim + (context_dim or 0), cond_dim), nn.SiLU(), nn.Linear(cond_dim, cond_dim)
        )
        w1, w2, w3 = width, 2 * width, 2 * width
        self.inp = nn.Conv2d(channels, w1, 3, padding=1)
        self.down1, self.down2 = _Block(w1, w1, cond_dim), _Block(w1, w2, cond_dim)
        self.mid = _Block(w2, w3, cond_dim)
        self.up2, self.up1 = _Block(w3 + w2, w2, cond_dim), _Block(w2 + w1, w1, cond_dim)
        self.out = nn.Conv2d(w1, self.out_channels, 3, padding=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        if x.shape[-3:] != (self.channels, 8, 8):
            raise ValueError(f"expected images of shape (..., {self.channels}, 8, 8), got {tuple(x.shape)}")
        batch = x.shape[:-3] if context is None else torch.broadcast_shapes(x.shape[:-3], context.shape[:-1])
        c = self.cond(torch.cat(_conditioning(self.embed, t, batch, context, x), -1)).reshape(
            -1, self.cond[-1].out_features
        )
        h0 = self.inp(x.expand(*batch, *x.shape[-3:]).reshape(-1, *x.shape[-3:]))
        h1 = self.down1(h0, c)  # 8x8
        h2 = self.down2(nn.functional.avg_pool2d(h1, 2), c)  # 4x4
        h3 = self.mid(nn.functional.avg_pool2d(h2, 2), c)  # 2x2
        u2 = self.up2(torch.cat([nn.functional.interpolate(h3, scale_factor=2.0), h2], 1), c)
        u1 = self.up1(torch.cat([nn.functional.interpolate(u2, scale_factor=2.0), h1], 1), c)
        return self.out(u1).reshape(*batch, self.out_channels, 8, 8)
