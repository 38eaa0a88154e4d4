"""Token data: a seeded Markov source with an exact likelihood, and digits as 64-token sequences."""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["MarkovSource", "digits_tokens", "ngram_distance"]


class MarkovSource:
    """A stationary Markov chain of ``order`` over ``vocab_size`` symbols, with
    transition rows drawn from a symmetric Dirichlet(``concentration``) (seeded):
    small concentrations give peaked, learnable rows. Sequences start in the
    chain's stationary distribution over ``order``-grams, so every position has
    the same marginal.

    Examples:
        >>> source = MarkovSource(vocab_size=5, order=2, seed=0)
        >>> x = source.sample(3, length=10)
        >>> source.log_prob(x).shape
        torch.Size([3])
    """

    def __init__(self, vocab_size: int = 20, order: int = 2, concentration: float = 0.1, seed: int = 0) -> None:
        if vocab_size < 2 or order < 1 or concentration <= 0:
            got = f"{vocab_size}, {order}, {concentration}"
            raise ValueError(f"need vocab_size >= 2, order >= 1, concentration > 0; got {got}")
        self.vocab_size, self.order = vocab_size, order
        rows = np.random.default_rng(seed).dirichlet(np.full(vocab_size, concentration), size=vocab_size**order)
        draws = torch.as_tensor(rows).clamp(min=1e-300)
        self.transitions = draws / draws.sum(-1, keepdim=True)  # row: context index (base vocab_size)
        self.initial = self._stationary()

    def _stationary(self) -> torch.Tensor:
        """Stationary distribution over ``order``-grams (context index = base-``vocab_size`` number)."""
        v, n = self.vocab_size, self.vocab_size**self.order
        chain = torch.zeros(n, n, dtype=torch.float64)
        for ctx in range(n):
            shifted = (ctx * v) % n  # drop the oldest symbol, append the new one
            chain[ctx, shifted : shifted + v] = self.transitions[ctx]
        p = torch.full((n,), 1.0 / n, dtype=torch.float64)
        for _ in range(10_000):
            new = p @ chain
            if (new - p).abs().max() < 1e-15:
                break
            p = new
        return new / new.sum()

    def entropy_rate(self) -> float:
        """``H(X_i | X_{i-order}, ..., X_{i-1})`` in nats under stationarity."""
        h_rows = -(self.transitions * self.transitions.log()).sum(-1)
        return float((self.initial * h_rows).sum())

    def entropy_per_token(self, length: int) -> float:
        """Exact ``H(X_1..X_length) / length`` (nats): the per-token NLL of true sequences."""
        h_start = -(self.initial * self.initial.clamp(min=1e-300).log()).sum().item()
        return (h_start + (length - self.order) * self.entropy_rate()) / length

    def _context(self, x: torch.Tensor, i: int) -> torch.Tensor:
        ctx = torch.zeros(len(x), dtype=torch.long)
        for j in range(i - self.order, i):
            ctx = ctx * self.vocab_size + x[:, j]
        return ctx

    def sample(self, num: int, length: int = 32, seed: int | None = None) -> torch.Tensor:
        if length < self.order:
            raise ValueError(f"length must be at least the order {self.order}, got {length}")
        gen = torch.Generator().manual_seed(seed if seed is not None else int(torch.randint(2**31, ())))
        start = torch.multinomial(self.initial, num, replacement=True, generator=gen)
        x = torch.zeros(num, length, dtype=torch.long)
        for j in range(self.order):
            x[:, self.order - 1 - j] = (start // self.vocab_size**j) % self.vocab_size
        for i in range(self.order, length):
            x[:, i] = torch.multinomial(self.transitions[self._context(x, i)], 1, generator=gen).squeeze(-1)
        return x

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """Exact ``log p(x)`` (nats) of each row of ``x`` (int64, ``(batch, length)``)."""
        if x.dtype != torch.long or x.dim() != 2 or x.shape[1] < self.order:
            raise ValueError(f"expected int64 tokens of shape (batch, >= {self.order}), got {x.dtype} {tuple(x.shape)}")
        x = x.cpu()
        total = self.initial[self._context(x, self.order)].log()
        for i in range(self.order, x.shape[1]):
            total = total + self.transitions[self._context(x, i), x[:, i]].log()
        return total


def digits_tokens(levels: int = 17) -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's digits as 64-token sequences over ``levels`` grey levels (int64), and the labels.
    Needs scikit-learn (``pip install scikit-learn``; in the ``dev`` extra), which ships the data."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as error:
        raise ImportError("digits_tokens needs scikit-learn: pip install scikit-learn") from error

    digits = load_digits()
    x = torch.as_tensor(digits.data, dtype=torch.float64)
    tokens = (x * (levels - 1) / 16).round().long()
    return tokens, torch.as_tensor(digits.target)


def ngram_distance(samples: torch.Tensor, reference: torch.Tensor, n: int = 2, vocab_size: int | None = None) -> float:
    """Total-variation distance between the ``n``-gram frequencies of two token sets (rows are sequences)."""
    vocab_size = vocab_size or int(max(samples.max(), reference.max())) + 1

    def freqs(x: torch.Tensor) -> torch.Tensor:
        codes = torch.zeros(len(x), x.shape[1] - n + 1, dtype=torch.long)
        for j in range(n):
            codes = codes * vocab_size + x[:, j : x.shape[1] - n + 1 + j].cpu()
        counts = torch.bincount(codes.flatten(), minlength=vocab_size**n).double()
        return counts / counts.sum()

    return 0.5 * (freqs(samples) - freqs(reference)).abs().sum().item()
