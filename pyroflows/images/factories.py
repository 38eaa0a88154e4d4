"""Factories for multi-scale image flows: Glow, RealNVP and residual flows
(levels that squeeze, then a stack of layers, with half the channels factored
out between levels; see `MultiScaleFlow`)."""

from __future__ import annotations

import torch

from pyroflows.images.multiscale import MultiScaleFlow
from pyroflows.transforms.image import GlowStep, ImageCoupling, Unsqueeze
from pyroflows.transforms.logdet import LogDetEstimator
from pyroflows.transforms.normalization import ActNorm
from pyroflows.transforms.residual import ConvResidual

__all__ = ["glow", "realnvp_image", "resflow_image"]


def _checked_shape(input_shape) -> tuple[int, int, int]:
    shape = tuple(input_shape)
    if len(shape) != 3 or not all(isinstance(n, int) and n >= 1 for n in shape):
        raise ValueError(f"input_shape must be (C, H, W) of positive ints, got {input_shape!r}")
    return shape


def _squeezed(shape, num_scales):
    c, h, w = shape
    if num_scales < 1:
        raise ValueError(f"num_scales must be >= 1, got {num_scales}")
    size = 2**num_scales
    if h % size or w % size:
        raise ValueError(
            f"{num_scales} scales halve H and W {num_scales} times: they must divide by {size}, got {shape}"
        )
    return c, h, w


def _squeeze_levels(input_shape, num_scales: int, make_layers) -> MultiScaleFlow:
    """Levels that squeeze, then apply ``make_layers(shape)`` (base -> data
    order), with half the channels factored out between levels."""
    c, h, w = _squeezed(_checked_shape(input_shape), num_scales)
    levels = []
    for scale in range(num_scales):
        shape = (4 * c, h // 2, w // 2)
        levels.append([*make_layers(shape), Unsqueeze(shape)])
        c, h, w = shape
        if scale < num_scales - 1:
            c = c // 2
    return MultiScaleFlow(levels)


def glow(
    input_shape: tuple[int, int, int],
    num_scales: int = 2,
    steps_per_scale: int = 8,
    hidden_channels: int = 64,
    num_blocks: int = 0,
    transform: str = "affine-sigmoid",
    seed: int | None = None,
) -> MultiScaleFlow:
    """Glow (Kingma & Dhariwal, arXiv:1807.03039): ``num_scales`` levels of
    squeeze and ``steps_per_scale`` `GlowStep`,
    with half the channels factored out after each level but the last.
    Couplings use Glow's sigmoid scale by default (``transform``, see
    `ImageCoupling`).

    Examples:
        >>> flow = glow((1, 8, 8), num_scales=2, steps_per_scale=4, hidden_channels=16)
        >>> tuple(tuple(level[0].event_shape) for level in flow.levels)
        ((4, 4, 4), (8, 2, 2))
    """
    gen = torch.Generator().manual_seed(seed) if seed is not None else None

    def steps(shape):
        return [
            GlowStep(shape, hidden_channels, num_blocks, transform, seed=_draw_seed(gen))
            for _ in range(steps_per_scale)
        ]

    return _squeeze_levels(input_shape, num_scales, steps)


def _draw_seed(gen):
    return None if gen is None else int(torch.randint(2**31, (), generator=gen))


def realnvp_image(
    input_shape: tuple[int, int, int],
    num_scales: int = 2,
    hidden_channels: int = 64,
    num_blocks: int = 2,
    transform: str = "affine",
) -> MultiScaleFlow:
    """Multi-scale RealNVP (Dinh et al., arXiv:1605.08803, sec. 3.6): each
    scale is three checkerboard couplings, a squeeze and three channel
    couplings, then half the channels are factored out; the last scale is
    four checkerboard couplings. An `ActNorm`
    follows each coupling (in place of the paper's batch norm).

    Examples:
        >>> flow = realnvp_image((1, 8, 8), num_scales=2, hidden_channels=16, num_blocks=1)
        >>> tuple(tuple(level[-1].output_shape) for level in flow.levels)
        ((1, 8, 8), (2, 4, 4))
    """
    c, h, w = _squeezed(_checked_shape(input_shape), num_scales - 1)

    def couplings(shape, mask, count):
        layers = []
        for k in range(count):  # data -> base order, reversed below
            layers += [ActNorm(shape), ImageCoupling(shape, transform, mask, k % 2, hidden_channels, num_blocks)]
        return layers

    levels = []
    for _ in range(num_scales - 1):
        squeezed = (4 * c, h // 2, w // 2)
        data_to_base = couplings((c, h, w), "checkerboard", 3)
        data_to_base += [Unsqueeze(squeezed), *couplings(squeezed, "channel", 3)]
        levels.append(data_to_base[::-1])
        c, h, w = 2 * c, h // 2, w // 2
    levels.append(couplings((c, h, w), "checkerboard", 4)[::-1])
    return MultiScaleFlow(levels)


def resflow_image(
    input_shape: tuple[int, int, int],
    num_scales: int = 2,
    blocks_per_scale: int = 4,
    hidden_channels: int = 64,
    coeff: float = 0.97,
    log_det: LogDetEstimator | None = None,
) -> MultiScaleFlow:
    """A multi-scale residual flow (Residual Flows, arXiv:1906.02735): each
    scale squeezes and applies ``blocks_per_scale`` pairs of
    `ActNorm` and
    `ConvResidual` (unbiased Russian-roulette
    log-dets by default), with half the channels factored out between scales.

    Examples:
        >>> flow = resflow_image((1, 8, 8), num_scales=2, blocks_per_scale=1, hidden_channels=8)
        >>> flow.log_prob(torch.rand(2, 1, 8, 8)).shape
        torch.Size([2])
    """

    def blocks(shape):
        return [
            layer
            for _ in range(blocks_per_scale)
            for layer in (ConvResidual(shape, hidden_channels, coeff, log_det), ActNorm(shape))
        ]

    return _squeeze_levels(input_shape, num_scales, blocks)
