"""Conditioner networks."""

from pyroflows.nn.convnets import ConvResNet
from pyroflows.nn.dense import DenseNN
from pyroflows.nn.lipschitz import LipschitzConvNet, LipschitzMLP, LipSwish, SpectralNormConv2d, SpectralNormLinear
from pyroflows.nn.made import MADE
from pyroflows.nn.odenet import ConcatSquashLinear, ConcatSquashMLP

__all__ = [
    "ConvResNet",
    "MADE",
    "ConcatSquashLinear",
    "ConcatSquashMLP",
    "DenseNN",
    "LipSwish",
    "LipschitzConvNet",
    "LipschitzMLP",
    "SpectralNormConv2d",
    "SpectralNormLinear",
]
