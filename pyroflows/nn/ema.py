"""Exponential moving average of a model's weights (used by the training loops)."""

from __future__ import annotations

import torch

__all__ = ["WeightAverage"]


class WeightAverage:
    """Exponential moving average of ``params``; the decay is warmed up as
    ``min(decay, (1 + n) / (10 + n))`` after ``n`` updates, so short runs are
    not pulled back to the initial weights.

    Example:
        >>> w = torch.nn.Parameter(torch.zeros(()))
        >>> average = WeightAverage([w], decay=0.5)
        >>> with torch.no_grad():
        ...     _ = w.fill_(1.0)
        >>> average.update(); average.copy_to_params(); round(w.item(), 3)
        0.818
    """

    def __init__(self, params: list[torch.Tensor], decay: float) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"ema must be in [0, 1) or None, got {decay!r}")
        self.params, self.decay, self.updates = params, decay, 0
        self.shadow = [p.detach().clone() for p in params]

    def update(self) -> None:
        """Fold the current weights into the average (after each optimiser step)."""
        self.updates += 1
        rate = min(self.decay, (1 + self.updates) / (10 + self.updates))
        torch._foreach_lerp_(self.shadow, [p.detach() for p in self.params], 1 - rate)

    @torch.no_grad()
    def copy_to_params(self) -> None:
        """Overwrite the weights with their average."""
        torch._foreach_copy_(self.params, self.shadow)
