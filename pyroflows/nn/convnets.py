"""Convolutional conditioners for image couplings."""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ConvResNet"]

_DENSE_PIXELS = 9  # up to 3x3 pixels a 3x3 convolution sees (nearly) the whole image


@functools.lru_cache(maxsize=32)
def _tap_index(h: int, w: int) -> torch.Tensor:
    """``(H W, H W)`` index of the 3x3 tap joining output pixel p and input
    pixel q (9 where q is outside p's window)."""
    rows, cols = torch.arange(h).repeat_interleave(w), torch.arange(w).repeat(h)
    dr = rows[None, :] - rows[:, None] + 1
    dc = cols[None, :] - cols[:, None] + 1
    inside = (dr >= 0) & (dr < 3) & (dc >= 0) & (dc < 3)
    return torch.where(inside, dr * 3 + dc, torch.full_like(dr, 9))


def conv3x3(x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """``conv(x)`` for a 3x3, padding-1 convolution. On images of at most 9
    pixels it is one dense matrix product (faster there than a convolution
    kernel, with the same result)."""
    n, c, h, w = x.shape
    if h * w > _DENSE_PIXELS:
        return conv(x)
    out = conv.out_channels
    taps = torch.cat([conv.weight.flatten(2), conv.weight.new_zeros(out, c, 1)], dim=2)  # (O, C, 10)
    dense = taps[:, :, _tap_index(h, w).to(x.device)]  # (O, C, P, Q)
    dense = dense.permute(0, 2, 1, 3).reshape(out * h * w, c * h * w)
    y = torch.matmul(x.reshape(n, c * h * w), dense.T).view(n, out, h * w)
    return (y + conv.bias[:, None]).view(n, out, h, w)


def conv1x1(x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """``conv(x)`` for a 1x1 convolution, as a batched matrix product."""
    n, c, h, w = x.shape
    y = torch.matmul(conv.weight.view(conv.out_channels, c), x.reshape(n, c, h * w))
    return (y + conv.bias[:, None]).view(n, conv.out_channels, h, w)


class ConvResNet(nn.Module):
    """A small ResNet for coupling conditioners (RealNVP, Glow):

    ``conv3x3 -> num_blocks x [h + conv1x1(relu(conv3x3(relu(h))))] -> relu ->
    conv1x1 -> relu -> conv3x3``, the last convolution zero-initialised so the
    coupling starts at the identity. With ``num_blocks=0`` it is Glow's
    three-convolution network.

    Args:
        in_channels: channels of the input ``(N, C_in, H, W)``.
        out_channels: channels of the output ``(N, C_out, H, W)``.
        hidden_channels: width of the hidden layers.
        num_blocks: residual blocks between the first and last layers.
        context_dim: a context vector ``(N, D)`` (added as a per-channel bias
            after the first convolution) or a feature-map shape ``(C_c, H, W)``
            (concatenated to the input channels), or ``None``.
        zero_init: start the last convolution at zero.

    Example:
        >>> net = ConvResNet(2, 4, hidden_channels=8)
        >>> net(torch.randn(3, 2, 8, 8)).abs().max().item()
        0.0
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        hidden_channels: int = 64,
        num_blocks: int = 1,
        context_dim: int | tuple[int, ...] | None = None,
        zero_init: bool = True,
    ) -> None:
        super().__init__()
        if num_blocks < 0:
            raise ValueError(f"num_blocks must be >= 0, got {num_blocks}")
        self.map_context = isinstance(context_dim, tuple)
        extra = context_dim[0] if self.map_context else 0
        self.inp = nn.Conv2d(in_channels + extra, hidden_channels, 3, padding=1)
        self.context = nn.Linear(context_dim, hidden_channels) if isinstance(context_dim, int) else None
        self.blocks = nn.ModuleList(  # (3x3, 1x1) convolutions of each residual block
            nn.ModuleList(
                [
                    nn.Conv2d(hidden_channels, hidden_channels, 3, padding=1),
                    nn.Conv2d(hidden_channels, hidden_channels, 1),
                ]
            )
            for _ in range(num_blocks)
        )
        self.mid = nn.Conv2d(hidden_channels, hidden_channels, 1)
        self.out = nn.Conv2d(hidden_channels, out_channels, 3, padding=1)
        if zero_init:
            nn.init.zeros_(self.out.weight)
            nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        if self.map_context:
            x = torch.cat([x, context], dim=1)
        h = conv3x3(x, self.inp)
        if self.context is not None:
            h = h + self.context(context)[..., None, None]
        for wide, narrow in self.blocks:
            h = h + conv1x1(F.relu(conv3x3(F.relu(h), wide)), narrow)
        h = F.relu(conv1x1(F.relu(h), self.mid))
        return conv3x3(h, self.out)
