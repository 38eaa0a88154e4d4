"""Mixture probability paths for discrete flow matching (Gat et al. 2024, arXiv:2407.15595).

Each of the ``L`` positions of a sequence is, at time ``t``, either still its
source token ``x_0`` or already the data token ``x_1``:

    p_t(x^i | x_0, x_1) = (1 - kappa_t) delta(x^i = x_0^i) + kappa_t delta(x^i = x_1^i),

with ``kappa_0 = 0`` and ``kappa_1 = 1``. The source is a mask token (an extra
symbol ``vocab_size``) or a uniform draw over the vocabulary. The conditional
rate to jump to ``x_1^i`` is ``lambda_t = kappa_t' / (1 - kappa_t)``.
"""

from __future__ import annotations

import math

import torch

__all__ = ["CosineKappa", "KappaScheduler", "MixturePath", "PolynomialKappa"]


class KappaScheduler:
    """``kappa_t`` rising from 0 at ``t = 0`` to 1 at ``t = 1``; ``__call__`` returns
    ``(kappa_t, d kappa_t / dt)``."""

    def __call__(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def inverse(self, kappa: torch.Tensor) -> torch.Tensor:
        """The time ``t`` with ``kappa_t = kappa`` (bisection; subclasses give it in closed form)."""
        low, high = torch.zeros_like(kappa), torch.ones_like(kappa)
        for _ in range(50):
            mid = (low + high) / 2
            below = self(mid)[0] < kappa
            low, high = torch.where(below, mid, low), torch.where(below, high, mid)
        return (low + high) / 2


class PolynomialKappa(KappaScheduler):
    """``kappa_t = t^n`` (``n = 1``: linear, the usual choice for a mask source)."""

    def __init__(self, n: float = 1.0) -> None:
        if n <= 0:
            raise ValueError(f"the exponent n must be positive, got {n}")
        self.n = n

    def __call__(self, t):
        return t**self.n, self.n * t ** (self.n - 1)

    def inverse(self, kappa):
        return kappa ** (1 / self.n)

    def __repr__(self) -> str:
        return f"PolynomialKappa(n={self.n})"


class CosineKappa(KappaScheduler):
    """``kappa_t = sin^2(pi t / 2)``: slow at both ends."""

    def __call__(self, t):
        return (0.5 * math.pi * t).sin().square(), 0.5 * math.pi * (math.pi * t).sin()

    def inverse(self, kappa):
        return kappa.sqrt().asin() * (2 / math.pi)

    def __repr__(self) -> str:
        return "CosineKappa()"


SOURCES = ("mask", "uniform")


class MixturePath:
    """The mixture path over a vocabulary of ``vocab_size`` tokens ``0..vocab_size-1``.

    ``source="mask"`` starts every position at the mask token ``vocab_size`` (so
    models read ``vocab_size + 1`` input symbols); ``source="uniform"`` starts at
    uniform random tokens.

    Examples:
        >>> path = MixturePath(4, "mask")
        >>> x_1 = torch.tensor([[0, 1, 2, 3]])
        >>> path.sample(path.sample_source(x_1.shape), x_1, torch.ones(1))
        tensor([[0, 1, 2, 3]])
    """

    def __init__(self, vocab_size: int, source: str = "mask", scheduler: KappaScheduler | None = None) -> None:
        if not isinstance(vocab_size, int) or vocab_size < 2:
            raise ValueError(f"vocab_size must be an int >= 2, got {vocab_size!r}")
        if source not in SOURCES:
            raise ValueError(f"source must be one of {SOURCES}, got {source!r}")
        self.vocab_size, self.source = vocab_size, source
        self.scheduler = scheduler or PolynomialKappa(1.0)

    @property
    def mask_token(self) -> int | None:
        """The index of the mask token (``vocab_size``), or ``None`` for a uniform source."""
        return self.vocab_size if self.source == "mask" else None

    @property
    def input_vocab_size(self) -> int:
        """How many symbols a model reads: the vocabulary, plus the mask token if any."""
        return self.vocab_size + (self.source == "mask")

    def sample_source(self, shape, device=None, generator: torch.Generator | None = None) -> torch.Tensor:
        if self.source == "mask":
            return torch.full(tuple(shape), self.vocab_size, dtype=torch.long, device=device)
        return torch.randint(self.vocab_size, tuple(shape), device=device, generator=generator)

    def sample(self, x_0: torch.Tensor, x_1: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """``x_t``: each position is ``x_1`` with probability ``kappa_t`` (``t`` has the batch shape)."""
        kappa, _ = self.scheduler(t)
        kappa = kappa.reshape(*t.shape, *(1,) * (x_1.dim() - t.dim()))
        return torch.where(torch.rand(x_1.shape, device=x_1.device) < kappa, x_1, x_0)

    def jump_rate(self, t: torch.Tensor) -> torch.Tensor:
        """``lambda_t = kappa_t' / (1 - kappa_t)``: the rate of leaving the source token."""
        kappa, d_kappa = self.scheduler(t)
        return d_kappa / (1 - kappa)

    def __repr__(self) -> str:
        return f"MixturePath({self.vocab_size}, source={self.source!r}, scheduler={self.scheduler!r})"
