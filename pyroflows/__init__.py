"""pyroflows: normalizing flows as Pyro transforms."""

from pyroflows import datasets, diagnostics, flows, infer, nn, posteriors, testing, transforms
from pyroflows.distributions import FlowDistribution
from pyroflows.flows import iaf, maf, nice, nsf, realnvp
from pyroflows.validation import set_validation, validation_enabled

__version__ = "0.1.0"

__all__ = [
    "FlowDistribution",
    "datasets",
    "diagnostics",
    "flows",
    "iaf",
    "infer",
    "maf",
    "nice",
    "nn",
    "nsf",
    "posteriors",
    "realnvp",
    "set_validation",
    "testing",
    "transforms",
    "validation_enabled",
]
