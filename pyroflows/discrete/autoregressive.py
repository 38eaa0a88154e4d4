"""An autoregressive transformer over token sequences: the exact-likelihood baseline."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from pyroflows.nn.tokens import SequenceTransformer
from pyroflows.validation import check_tokens

__all__ = ["AutoregressiveModel"]


class AutoregressiveModel(nn.Module):
    """``p(x) = prod_i p(x_i | x_<i)`` by a causal `SequenceTransformer`
    (the same backbone as the flow-matching models, so sizes compare directly).
    Its inputs are shifted by one (a start symbol first): pair offsets ``(-1, 0)``
    embed ``(x[i-2], x[i-1])`` at the position predicting ``x[i]``.

    Examples:
        >>> model = AutoregressiveModel(5, length=6, dim=16, depth=1, heads=2)
        >>> model.log_prob(model.sample(4)).shape
        torch.Size([4])
    """

    def __init__(
        self,
        vocab_size: int,
        length: int,
        dim: int = 128,
        depth: int = 4,
        heads: int = 4,
        pairs: Sequence[tuple[int, int]] = (),
    ) -> None:
        super().__init__()
        self.vocab_size, self.length = vocab_size, length
        if any(offset > 0 for pair in pairs for offset in pair):
            raise ValueError(f"a causal model reads no later positions: pair offsets must be <= 0, got {pairs!r}")
        self.net = SequenceTransformer(
            vocab_size + 1, length, vocab_size, dim, depth, heads, causal=True, time=False, pairs=pairs
        )

    def validate_data(self, x: torch.Tensor) -> None:
        check_tokens(x, self.length, self.vocab_size)

    def _log_probs(self, x: torch.Tensor) -> torch.Tensor:
        bos = torch.full_like(x[:, :1], self.vocab_size)  # the start symbol
        log_p = self.net(torch.cat([bos, x[:, :-1]], 1)).log_softmax(-1)
        return log_p.gather(-1, x[..., None]).squeeze(-1)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """Exact ``log p(x)`` in nats, one per sequence."""
        self.validate_data(x)
        return self._log_probs(x).sum(-1)

    def loss(self, x: torch.Tensor, kind: str = "nll", *, validate: bool = True) -> torch.Tensor:
        if kind != "nll":
            raise ValueError(f"an autoregressive model trains on kind='nll', got {kind!r}")
        if validate:
            self.validate_data(x)
        return self._loss(x, kind)

    def _loss(self, x: torch.Tensor, kind: str = "nll") -> torch.Tensor:
        return -self._log_probs(x).mean()

    @torch.no_grad()
    def sample(self, num: int, temperature: float = 1.0, generator: torch.Generator | None = None) -> torch.Tensor:
        """``num`` sequences, one position at a time (``length`` network calls)."""
        if not isinstance(num, int) or num < 1:
            raise ValueError(f"number of samples must be a positive int, got {num!r}")
        device = self.net.positions.device
        inputs = torch.full((num, self.length), self.vocab_size, dtype=torch.long, device=device)  # start symbol
        x = torch.zeros(num, self.length, dtype=torch.long, device=device)
        for i in range(self.length):
            logits = self.net(inputs)[:, i] / temperature
            x[:, i] = torch.multinomial(logits.softmax(-1), 1, generator=generator).squeeze(-1)
            if i + 1 < self.length:
                inputs[:, i + 1] = x[:, i]
        return x
