"""Generative flows for images: multi-scale Glow and RealNVP, dequantisation,
bits/dim, data loaders and a training loop that runs under ``torchrun``."""

from pyroflows.images.dequantization import UniformDequantization, VariationalDequantization
from pyroflows.images.factories import glow, realnvp_image, resflow_image
from pyroflows.images.model import ImageFlow
from pyroflows.images.multiscale import GaussianPrior, MultiScaleDistribution, MultiScaleFlow, SplitPrior

__all__ = [
    "GaussianPrior",
    "ImageFlow",
    "MultiScaleDistribution",
    "MultiScaleFlow",
    "SplitPrior",
    "UniformDequantization",
    "VariationalDequantization",
    "glow",
    "realnvp_image",
    "resflow_image",
]
