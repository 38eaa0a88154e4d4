"""Generative flows for images: multi-scale Glow and RealNVP, dequantisation,
bits/dim, data loaders and a training loop that runs under ``torchrun``."""

from pyroflows.images.dequantization import UniformDequantization, VariationalDequantization
from pyroflows.images.model import ImageFlow
from pyroflows.images.multiscale import (
    GaussianPrior,
    MultiScaleDistribution,
    MultiScaleFlow,
    SplitPrior,
    glow,
    realnvp_image,
    resflow_image,
)

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
