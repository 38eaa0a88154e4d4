"""Convolutional conditioners for image couplings."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["ConvResNet"]


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
        self.blocks = nn.ModuleList(
            nn.Sequential(
                nn.ReLU(),
                nn.Conv2d(hidden_channels, hidden_channels, 3, padding=1),
                nn.ReLU(),
                nn.Conv2d(hidden_channels, hidden_channels, 1),
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
        h = self.inp(x)
        if self.context is not None:
            h = h + self.context(context)[..., None, None]
        for block in self.blocks:
            h = h + block(h)
        h = torch.relu(self.mid(torch.relu(h)))
        return self.out(h)
