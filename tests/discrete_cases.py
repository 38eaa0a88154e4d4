"""Shared fixtures of the discrete flow-matching tests: i.i.d. positions with a closed-form posterior."""

import torch
from torch import nn

from pyroflows.discrete import DiscreteFlowMatcher, MixturePath

V, L = 4, 6
PI = torch.tensor([0.5, 0.25, 0.15, 0.10])  # i.i.d. positions: the posterior is known in closed form


class ExactPosterior(nn.Module):
    """The true ``p(x_1^i | x_t)`` when positions are i.i.d. ``PI`` (mask or uniform source)."""

    def __init__(self, path: MixturePath) -> None:
        super().__init__()
        self.path = path
        self.calls = 0
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, x_t, t):
        self.calls += 1
        logits = PI.log().expand(*x_t.shape, V).clone()
        if self.path.source == "uniform":  # p(y | z) ~ PI(y) (kappa 1(y = z) + (1 - kappa) / V)
            kappa = self.path.scheduler(t)[0][:, None, None]
            same = nn.functional.one_hot(x_t, V).to(logits)
            logits = logits + (kappa * same + (1 - kappa) / V).log()
        return logits + 0 * self.dummy


def exact_model(source: str) -> DiscreteFlowMatcher:
    path = MixturePath(V, source)
    return DiscreteFlowMatcher(ExactPosterior(path), path, L)


def iid_data(n: int, seed: int = 0) -> torch.Tensor:
    return torch.multinomial(PI, n * L, replacement=True, generator=torch.Generator().manual_seed(seed)).view(n, L)
