"""Conditioner networks."""

from pyroflows.nn.convnets import ConvResNet
from pyroflows.nn.dense import DenseNN
from pyroflows.nn.lipschitz import LipschitzMLP, LipSwish, SpectralNormLinear
from pyroflows.nn.made import MADE, MaskedLinear
from pyroflows.nn.odenet import ConcatSquashLinear, ConcatSquashMLP

__all__ = [
    "ConvResNet",
    "MADE",
    "ConcatSquashLinear",
    "ConcatSquashMLP",
    "DenseNN",
    "LipSwish",
    "LipschitzMLP",
    "MaskedLinear",
    "SpectralNormLinear",
]
