"""Variational inference with flows: autoguides, flow priors, the fit loop."""

from pyroflows.infer.amortized import AmortizedFlow
from pyroflows.infer.autoguide import AutoFlow
from pyroflows.infer.fit import fit
from pyroflows.infer.latent import LatentSpace, init_to_mean_or_zero, init_to_unconstrained_zero
from pyroflows.infer.mass_covering import fit_mass_covering
from pyroflows.infer.neutra import neutra
from pyroflows.infer.prior import FlowPrior
from pyroflows.infer.stopping import StopRule
from pyroflows.infer.warm_start import laplace

__all__ = [
    "AmortizedFlow",
    "AutoFlow",
    "FlowPrior",
    "LatentSpace",
    "StopRule",
    "fit",
    "fit_mass_covering",
    "init_to_mean_or_zero",
    "init_to_unconstrained_zero",
    "laplace",
    "neutra",
]
