"""The exact denoiser of a `MarkovSource`: what a perfect network would return.

Given a sequence with some positions masked, forward-backward over the chain's
``order``-gram states gives ``log p(x^i = v | unmasked positions)`` at every
position, exactly. Plugged into `DiscreteFlowMatcher` it separates the
sampler's own error (several positions drawn independently in one step) from
the network's: samples from it show the floor a given number of steps allows.
"""

from __future__ import annotations

import torch
from torch import nn

from pyroflows.discrete.data import MarkovSource
from pyroflows.validation import check_tokens

__all__ = ["ExactMarkovDenoiser"]


class ExactMarkovDenoiser(nn.Module):
    """``(x_t, t) -> log p(x_1^i | x_t)`` for a mask-source path over a `MarkovSource`.

    ``t`` is ignored: with a mask source the posterior depends on ``x_t`` alone.
    Tokens equal to ``vocab_size`` (the path's mask token) are unobserved; the
    result is ``(batch, length, vocab_size)`` float32 log-probabilities
    (a point mass at observed positions). Costs ``length * vocab_size**(order + 1)``
    multiply-adds per sequence.

    Examples:
        >>> source = MarkovSource(vocab_size=4, order=2, seed=0)
        >>> x = torch.tensor([[0, 4, 4, 1, 2]])  # 4 is the mask
        >>> p = ExactMarkovDenoiser(source, length=5)(x).exp()
        >>> p.shape, torch.allclose(p.sum(-1), torch.ones(1, 5))
        (torch.Size([1, 5, 4]), True)
        >>> p[0, 3]  # observed: a point mass
        tensor([0., 1., 0., 0.])
    """

    def __init__(self, source: MarkovSource, length: int) -> None:
        super().__init__()
        if not isinstance(source, MarkovSource):
            raise TypeError(f"source must be a MarkovSource, got {type(source).__name__}")
        if not isinstance(length, int) or length < source.order:
            raise ValueError(f"length must be an int >= the order {source.order}, got {length!r}")
        self.source, self.length = source, length
        self.vocab_size = source.vocab_size
        self._placeholder = nn.Parameter(torch.zeros(()), requires_grad=False)  # gives the model a device

    def forward(self, x: torch.Tensor, t: torch.Tensor | None = None) -> torch.Tensor:
        check_tokens(x, self.length, self.vocab_size + 1)
        v, order, n = self.vocab_size, self.source.order, self.vocab_size**self.source.order
        rest = n // v  # states without their oldest symbol
        device, x = x.device, x.cpu()
        masked = x == v
        hot = nn.functional.one_hot(x.clamp(max=v - 1), v).double()
        evidence = hot.masked_fill_(masked[..., None], 1.0)  # (N, L, V): 1 for every symbol where masked
        table = self.source.transitions.view(v, rest, v)  # [oldest symbol, the rest, next symbol]
        # alpha[i]: p(state at i, evidence up to i), state = symbols i-order+1..i; rescaled per step
        alpha = self.source.initial.expand(len(x), n)
        for j in range(order):
            alpha = alpha * _digit(evidence[:, j], v, order, j)
        alphas = {order - 1: alpha / alpha.sum(-1, keepdim=True)}
        for i in range(order, self.length):
            # new state (r, c) from (a, r): sum over the oldest symbol a
            alpha = torch.einsum("nar,arc->nrc", alphas[i - 1].view(-1, v, rest), table) * evidence[:, i, None, :]
            alpha = alpha.reshape(len(x), n)
            alphas[i] = alpha / alpha.sum(-1, keepdim=True)
        beta = torch.ones(len(x), n, dtype=torch.float64)
        betas = {self.length - 1: beta}
        for i in range(self.length - 2, order - 2, -1):
            ahead = beta.view(len(x), rest, v) * evidence[:, i + 1, None, :]
            beta = torch.einsum("arc,nrc->nar", table, ahead).reshape(len(x), n)
            betas[i] = beta = beta / beta.sum(-1, keepdim=True)
        out = torch.empty(len(x), self.length, v, dtype=torch.float64)
        first = (alphas[order - 1] * betas[order - 1]).view(len(x), *[v] * order)
        for j in range(order):  # positions up to the first full state: its symbols
            others = [d + 1 for d in range(order) if d != j]
            out[:, j] = first.sum(others) if others else first  # (sum over [] would sum everything)
        for i in range(order, self.length):
            out[:, i] = (alphas[i] * betas[i]).view(len(x), rest, v).sum(1)
        out = out / out.sum(-1, keepdim=True)
        return out.clamp(min=1e-300).log().float().to(device)


def _digit(evidence: torch.Tensor, v: int, order: int, j: int) -> torch.Tensor:
    """Evidence on symbol ``j`` (0 = oldest) of an ``order``-gram state, as ``(N, v**order)``."""
    shape = [len(evidence)] + [1] * order
    shape[j + 1] = v
    return evidence.view(shape).expand(len(evidence), *[v] * order).reshape(len(evidence), -1)
