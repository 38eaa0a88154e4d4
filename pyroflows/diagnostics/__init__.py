"""Posterior diagnostics: PSIS k-hat, importance resampling, ArviZ, reference comparison."""

from pyroflows.diagnostics.arviz import nuts, to_inference_data
from pyroflows.diagnostics.draws import GuideDraws, draw
from pyroflows.diagnostics.importance import PSIS, importance_resample, psis, psis_diagnostic
from pyroflows.diagnostics.plots import pair_plot
from pyroflows.diagnostics.reference import Comparison, compare, energy_distance

__all__ = [
    "PSIS",
    "Comparison",
    "GuideDraws",
    "compare",
    "draw",
    "energy_distance",
    "importance_resample",
    "nuts",
    "pair_plot",
    "psis",
    "psis_diagnostic",
    "to_inference_data",
]
