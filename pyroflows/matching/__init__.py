"""Continuous flow matching, OT couplings and rectified flow."""

from pyroflows.matching.couplings import ExactOT, Independent, LabelAwareOT, PairCoupling, SinkhornOT
from pyroflows.matching.metrics import wasserstein2
from pyroflows.matching.model import FlowMatcher
from pyroflows.matching.paths import AffinePath, CondOT, Cosine, Scheduler, VariancePreserving
from pyroflows.matching.train import distill, reflow, reflow_pairs, straightness, train_matcher

__all__ = [
    "AffinePath",
    "CondOT",
    "Cosine",
    "PairCoupling",
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
    "train_matcher",
    "wasserstein2",
]
