"""Pieces every training loop shares (the VI fit, flow matching, discrete
flow matching, image training): the error a non-finite loss raises, the
learning-rate schedule, early stopping, iterate averaging and gradient
clipping with a finiteness check.

This module sits below every family so that each loop can import it
without importing another family.
"""

from __future__ import annotations

import math
import numbers

import numpy as np
import torch

__all__ = ["EarlyStopping", "IterateAverage", "NonFiniteLossError", "check_positive", "clip_gradients", "warmup_cosine"]


class NonFiniteLossError(FloatingPointError):
    """The loss or its gradient became NaN or infinite during training."""


def check_positive(name: str, value, kind=numbers.Real, optional: bool = False) -> None:
    """Raise ``ValueError`` unless ``value`` is a positive, finite ``kind`` (or ``None`` when ``optional``)."""
    if optional and value is None:
        return
    if not isinstance(value, kind) or isinstance(value, bool) or not 0 < value < math.inf:
        what = "a positive integer" if kind is numbers.Integral else "a positive, finite number"
        raise ValueError(f"{name} must be {what}{' or None' if optional else ''}, got {value!r}")


def warmup_cosine(step: int, num_steps: int, warmup: float, final_lr: float) -> float:
    """Linear warm-up over the first ``warmup`` fraction of steps, then cosine
    decay from 1 to ``final_lr`` (a fraction of the initial rate)."""
    warm = max(1, int(warmup * num_steps))
    if step < warm:
        return (step + 1) / warm
    progress = (step - warm) / max(1, num_steps - warm)
    return final_lr + (1 - final_lr) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


class EarlyStopping:
    """Stops when the mean loss over a window of ``patience // 5`` steps has
    not improved on its best by ``rel_tol`` (relative) for ``patience`` steps."""

    def __init__(self, patience: int, rel_tol: float = 1e-3) -> None:
        self.patience, self.rel_tol = patience, rel_tol
        self.window = max(10, patience // 5)
        self.best, self.best_step = math.inf, 0

    def __call__(self, losses: list[float]) -> bool:
        step = len(losses)
        if step % self.window:
            return False
        mean = float(np.mean(losses[-self.window :]))
        if mean < self.best - self.rel_tol * abs(self.best if math.isfinite(self.best) else mean):
            self.best, self.best_step = mean, step
        return step - self.best_step >= self.patience


class IterateAverage:
    """The running mean of parameters from step ``start`` on (Polyak-Ruppert)."""

    def __init__(self, start: int) -> None:
        self.start, self.count, self.mean = start, 0, None

    @torch.no_grad()
    def update(self, step: int, params: list[torch.Tensor]) -> None:
        if step < self.start:
            return
        self.count += 1
        if self.mean is None:
            self.mean = [p.detach().clone() for p in params]
        else:
            torch._foreach_lerp_(self.mean, [p.detach() for p in params], 1.0 / self.count)

    def reset(self) -> None:
        """Forget the average (the parameter list changed)."""
        self.count, self.mean = 0, None


def clip_gradients(grads: list[torch.Tensor], clip_norm: float | None) -> float:
    """The global norm of ``grads`` (one sync), after scaling them in place to
    at most ``clip_norm``; NaN or infinite when any gradient is."""
    if not grads:
        return 0.0
    norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads))).item()
    if clip_norm is not None and math.isfinite(norm) and norm > clip_norm:
        torch._foreach_mul_(grads, clip_norm / (norm + 1e-6))
    return norm
