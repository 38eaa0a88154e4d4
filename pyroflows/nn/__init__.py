"""Conditioner networks."""

from pyroflows.nn.dense import DenseNN
from pyroflows.nn.lipschitz import LipschitzMLP, LipSwish, SpectralNormLinear
from pyroflows.nn.made import MADE, MaskedLinear

__all__ = ["MADE", "DenseNN", "LipSwish", "LipschitzMLP", "MaskedLinear", "SpectralNormLinear"]
