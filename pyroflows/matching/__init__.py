"""Continuous flow matching, OT couplings and rectified flow."""

from pyroflows.matching.couplings import Coupling, ExactOT, Independent, LabelAwareOT, SinkhornOT
from pyroflows.matching.metrics import wasserstein2
from pyroflows.matching.model import FlowMatcher
from pyroflows.matching.paths import AffinePath, CondOT, Cosine, Scheduler, VariancePreserving
from pyroflows.matching.train import distill, reflow, reflow_pairs, straightness, train

__all__ = [
    "AffinePath",
    "CondOT",
    "Cosine",
    "Coupling",
    "ExactOT",
    "FlowMatcher",
    "Independent",
    "LabelAwareOT",
    "Scheduler",
    "SinkhornOT",
    "VariancePreserving",
    "distill",
    "reflow",
    "reflow_pairs",
    "straightness",
    "train",
    "wasserstein2",
]
