"""Discrete flow matching on continuous-time Markov chains, with an autoregressive baseline."""

from pyroflows.discrete.autoregressive import AutoregressiveModel
from pyroflows.discrete.data import MarkovSource, digits_tokens, ngram_distance
from pyroflows.discrete.exact import ExactMarkovDenoiser
from pyroflows.discrete.model import DiscreteFlowMatcher
from pyroflows.discrete.paths import CosineKappa, KappaScheduler, MixturePath, PolynomialKappa
from pyroflows.discrete.train import train_discrete

__all__ = [
    "AutoregressiveModel",
    "CosineKappa",
    "DiscreteFlowMatcher",
    "ExactMarkovDenoiser",
    "KappaScheduler",
    "MarkovSource",
    "MixturePath",
    "PolynomialKappa",
    "digits_tokens",
    "ngram_distance",
    "train_discrete",
]
