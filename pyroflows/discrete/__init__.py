"""Discrete flow matching on continuous-time Markov chains, with an autoregressive baseline."""

from pyroflows.discrete.autoregressive import AutoregressiveModel
from pyroflows.discrete.data import MarkovSource, digits_tokens, ngram_distance
from pyroflows.discrete.exact import ExactMarkovDenoiser
from pyroflows.discrete.model import DiscreteFlowMatcher
from pyroflows.discrete.paths import Cosine, KappaScheduler, MixturePath, Polynomial
from pyroflows.discrete.train import train

__all__ = [
    "AutoregressiveModel",
    "Cosine",
    "DiscreteFlowMatcher",
    "ExactMarkovDenoiser",
    "KappaScheduler",
    "MarkovSource",
    "MixturePath",
    "Polynomial",
    "digits_tokens",
    "ngram_distance",
    "train",
]
