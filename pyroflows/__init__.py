"""pyroflows: normalizing flows as Pyro transforms."""

from pyroflows import flows, nn, transforms
from pyroflows.distributions import FlowDistribution
from pyroflows.flows import iaf, maf, nice, nsf, realnvp
from pyroflows.validation import set_validation, validation_enabled

__version__ = "0.1.0"

__all__ = [
    "FlowDistribution",
    "flows",
    "iaf",
    "maf",
    "nice",
    "nn",
    "nsf",
    "realnvp",
    "set_validation",
    "transforms",
    "validation_enabled",
]
