"""Dequantisation: continuous noise that turns a likelihood on ``[0, 1]^D``
into a bound on the probability of discrete pixels.

For pixels ``x`` in ``{0, ..., K-1}^D`` and noise ``v`` in ``[0, 1)^D`` from
``q(v | x)``, with ``u = (x + v) / K``:

$$
\\log P(x) \\ge \\mathbb{E}_{q}\\left[\\log p(u) - D \\log K - \\log q(v \\mid x)\\right]
$$

Uniform noise has ``log q = 0`` (Theis et al., arXiv:1511.01844); variational
dequantisation learns ``q`` (Flow++, Ho et al., arXiv:1902.00275).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pyroflows.images.multiscale import diagonal_normal_log_prob
from pyroflows.nn.convnets import ConvResNet
from pyroflows.transforms.image import ImageCoupling

__all__ = ["UniformDequantization", "VariationalDequantization"]


class UniformDequantization(nn.Module):
    """``v ~ U[0, 1)^D``: ``log q(v | x) = 0``."""

    def draw(self, shape, generator=None, device=None, dtype=None) -> torch.Tensor:
        """The noise for a batch of images of ``shape`` (uniform)."""
        return torch.rand(shape, generator=generator, dtype=dtype).to(device)

    def forward(self, x: torch.Tensor, noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``v`` and ``log q(v | x)`` (zeros)."""
        return noise, noise.new_zeros(noise.shape[0])


class VariationalDequantization(nn.Module):
    """Learned dequantising noise (Flow++, arXiv:1902.00275, sec. 3.1):
    ``v = sigmoid(g(eps; x))`` with ``eps ~ N(0, I)`` and ``g`` a flow of
    checkerboard `ImageCoupling` layers whose
    conditioners read features of ``x``:

    $$
    \\log q(v \\mid x) = \\log \\mathcal{N}(\\epsilon) - \\log|\\det \\partial g / \\partial \\epsilon|
    - \\sum_i \\log \\sigma'(g_i)
    $$

    Args:
        input_shape: ``(C, H, W)``.
        num_levels: ``K``, the number of pixel values.
        num_steps: couplings in ``g``.
        hidden_channels: width of the conditioners and the feature network.
        feature_channels: channels of the features of ``x``.

    Examples:
        >>> deq = VariationalDequantization((1, 8, 8), num_levels=17, num_steps=2, hidden_channels=8)
        >>> x = torch.randint(0, 17, (4, 1, 8, 8)).float()
        >>> v, log_q = deq(x, deq.draw(x.shape))
        >>> bool(((v > 0) & (v < 1)).all()), log_q.shape
        (True, torch.Size([4]))
    """

    def __init__(
        self,
        input_shape: tuple[int, int, int],
        num_levels: int,
        num_steps: int = 4,
        hidden_channels: int = 32,
        feature_channels: int = 8,
        num_blocks: int = 1,
    ) -> None:
        super().__init__()
        c, h, w = input_shape
        self.num_levels = num_levels
        self.features = ConvResNet(c, feature_channels, hidden_channels, num_blocks, zero_init=False)
        context = (feature_channels, h, w)
        self.steps = nn.ModuleList(
            ImageCoupling(input_shape, "affine", "checkerboard", k % 2, hidden_channels, num_blocks, context)
            for k in range(num_steps)
        )

    def draw(self, shape, generator=None, device=None, dtype=None) -> torch.Tensor:
        """The noise ``eps`` for a batch of images of ``shape`` (standard normal)."""
        return torch.randn(shape, generator=generator, dtype=dtype).to(device)

    def forward(self, x: torch.Tensor, noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``v`` in ``(0, 1)`` and ``log q(v | x)`` for pixels ``x`` (floats) and noise ``eps``."""
        features = self.features(x / (self.num_levels - 1) - 0.5)
        h = noise
        log_q = diagonal_normal_log_prob(noise, torch.zeros(()), torch.zeros(()))
        for step in self.steps:
            h, log_det = step.forward_and_log_det(h, features, validate=False)
            log_q = log_q - log_det
        log_q = log_q - (F.logsigmoid(h) + F.logsigmoid(-h)).flatten(1).sum(-1)
        return torch.sigmoid(h), log_q
