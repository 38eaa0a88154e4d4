"""Variational inference with flows: autoguides, flow priors, the fit loop."""

from pyroflows.infer.autoguide import PRESETS, AutoFlow, default_options
from pyroflows.infer.fit import NonFiniteLossError, fit
from pyroflows.infer.latent import LatentSpace, init_to_unconstrained_zero
from pyroflows.infer.warm_start import laplace

__all__ = [
    "PRESETS",
    "AutoFlow",
    "LatentSpace",
    "NonFiniteLossError",
    "default_options",
    "fit",
    "init_to_unconstrained_zero",
    "laplace",
]
