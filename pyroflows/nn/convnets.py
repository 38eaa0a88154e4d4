"""Convolutional conditioners for image couplings."""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ConvResNet"]

_SMALL_PIXELS = 16  # up to 4x4 pixels, convolutions run as matrix products on pixel-major features


@functools.lru_cache(maxsize=32)
def _shifts(h: int, w: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """``(Q, 9, P)`` one-hot: input pixel q reaches output pixel p through 3x3
    tap k (zero padding: taps that leave the image have no entry)."""
    rows, cols = torch.arange(h).repeat_interleave(w), torch.arange(w).repeat(h)
    dr = rows[:, None] - rows[None, :] + 1  # (Q, P)
    dc = cols[:, None] - cols[None, :] + 1
    inside = (dr >= 0) & (dr < 3) & (dc >= 0) & (dc < 3)
    tap = torch.where(inside, dr * 3 + dc, torch.full_like(dr, 9))
    return F.one_hot(tap, 10)[..., :9].transpose(1, 2).contiguous().to(device, dtype)


def _conv_in(x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """3x3 convolution of a small image ``(N, C, H, W)`` to pixel-major
    features ``(N, P, O)``: the 9 shifted copies by one product, then the weights."""
    n, c, h, w = x.shape
    shifts = _shifts(h, w, x.device, x.dtype)
    cols = (x.reshape(n * c, h * w) @ shifts.view(h * w, -1)).view(n, c, 9, h * w)
    cols = cols.permute(0, 3, 1, 2).reshape(n * h * w, c * 9)
    return F.linear(cols, conv.weight.flatten(1), conv.bias).view(n, h * w, -1)


def _taps(x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """Pixel-major features ``(N, P, C)`` through each of the 3x3 taps:
    ``(N, P, 9, O)``, to be summed over the shifts."""
    n, p, c = x.shape
    weight = conv.weight.flatten(2).permute(1, 2, 0).reshape(c, -1)  # (C, 9 O)
    return (x.reshape(n * p, c) @ weight).view(n, p, 9, conv.out_channels)


def _conv_out(x: torch.Tensor, conv: nn.Conv2d, h: int, w: int) -> torch.Tensor:
    """3x3 convolution of pixel-major features ``(N, P, C)`` to an image ``(N, O, H, W)``."""
    n, p, _ = x.shape
    taps = _taps(x, conv).permute(0, 3, 1, 2).reshape(n * conv.out_channels, p * 9)
    y = (taps @ _shifts(h, w, x.device, x.dtype).view(p * 9, p)).view(n, -1, p) + conv.bias[:, None]
    return y.view(n, -1, h, w)


def _conv_mid(x: torch.Tensor, conv: nn.Conv2d, h: int, w: int) -> torch.Tensor:
    """3x3 convolution of pixel-major features ``(N, P, C)`` to ``(N, P, O)``."""
    n, p, _ = x.shape
    shifts = _shifts(h, w, x.device, x.dtype).view(p * 9, p)
    return torch.matmul(shifts.T, _taps(x, conv).view(n, p * 9, -1)) + conv.bias


def conv1x1(x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """``conv(x)`` for a 1x1 convolution, as a batched matrix product."""
    n, c, h, w = x.shape
    y = torch.matmul(conv.weight.view(conv.out_channels, c), x.reshape(n, c, h * w))
    return (y + conv.bias[:, None]).view(n, conv.out_channels, h, w)


def _linear(x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """A 1x1 convolution on pixel-major features ``(..., C)``."""
    return F.linear(x, conv.weight.flatten(1), conv.bias)


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

    Examples:
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
        if x.shape[-2] * x.shape[-1] <= _SMALL_PIXELS:
            return self._small_image_forward(x, context)
        h = self.inp(x)
        if self.context is not None:
            h = h + self.context(context)[..., None, None]
        for wide, narrow in self.blocks:
            h = h + conv1x1(F.relu(wide(F.relu(h))), narrow)
        h = F.relu(conv1x1(F.relu(h), self.mid))
        return self.out(h)

    def _small_image_forward(self, x: torch.Tensor, context: torch.Tensor | None) -> torch.Tensor:
        """The same network on small images by matrix products, the hidden
        features pixel-major ``(N, P, C)`` so no layout copies."""
        height, width = x.shape[-2:]
        h = _conv_in(x, self.inp)
        if self.context is not None:
            h = h + self.context(context)[:, None, :]
        for wide, narrow in self.blocks:
            h = h + _linear(F.relu(_conv_mid(F.relu(h), wide, height, width)), narrow)
        h = F.relu(_linear(F.relu(h), self.mid))
        return _conv_out(h, self.out, height, width)
