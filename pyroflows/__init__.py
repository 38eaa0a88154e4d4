"""pyroflows: normalizing flows as Pyro transforms."""

from pyroflows import datasets, flows, nn, testing, transforms
from pyroflows.distributions import FlowDistribution
from pyroflows.flows import iaf, maf, nice, nsf, realnvp
from pyroflows.validation import set_validation, validation_enabled

__version__ = "0.1.0"

__all__ = [
    "FlowDistribution",
    "datasets",
    "flows",
    "iaf",
    "maf",
    "nice",
    "nn",
    "nsf",
    "realnvp",
    "set_validation",
    "testing",
    "transforms",
    "validation_enabled",
]
