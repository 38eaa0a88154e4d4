"""Conditioner networks."""

from pyroflows.nn.dense import DenseNN
from pyroflows.nn.made import MADE, MaskedLinear

__all__ = ["DenseNN", "MADE", "MaskedLinear"]
