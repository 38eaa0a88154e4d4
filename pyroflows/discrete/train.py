"""The training loop for discrete flow matching (and the autoregressive baseline)."""

from __future__ import annotations

import math
import numbers
from pathlib import Path

import torch

from pyroflows.training import ExponentialAverage, Trainer, check_positive

__all__ = ["train_discrete"]


def train_discrete(
    model: torch.nn.Module,
    data: torch.Tensor,
    steps: int,
    batch_size: int = 256,
    lr: float = 1e-3,
    loss: str = "ce",
    optimizer: torch.optim.Optimizer | None = None,
    seed: int | None = None,
    max_seconds: float | None = None,
    progress: bool = True,
    ema: float | None = None,
    decay: bool = False,
    checkpoint: str | Path | None = None,
    checkpoint_every: int = 500,
) -> list[float]:
    """Adam on ``model.loss(batch, loss)`` over random minibatches of ``data`` (int64 rows).

    Works for `DiscreteFlowMatcher` (``loss`` ``"ce"``
    or ``"kl"``) and `AutoregressiveModel` (``"nll"``).
    Stops after ``steps`` steps or ``max_seconds`` of wall time, whichever comes
    first. With ``ema`` the model ends with an exponential moving average of its
    weights (`ExponentialAverage`). With ``decay`` each learning
    rate follows a cosine from its initial value to zero over the run, whose progress is the larger
    of the step fraction and the fraction of ``max_seconds`` spent. With
    ``checkpoint`` (a path) the run saves its state there every
    ``checkpoint_every`` steps and at the end, and a run started on an
    existing file resumes it (to ``steps`` in all). Raises
    `NonFiniteLossError` on a NaN/Inf loss.
    Returns the losses."""
    check_positive("steps", steps, numbers.Integral)
    check_positive("batch_size", batch_size, numbers.Integral)
    check_positive("max_seconds", max_seconds, optional=True)
    model.validate_data(data)
    model.loss(data[:1], loss)  # checks the loss name once
    trainer = Trainer(
        optimizer or torch.optim.Adam(model.parameters(), lr=lr),
        steps,
        schedule=_cosine if decay else None,
        average=None if ema is None else ExponentialAverage(ema),
        max_seconds=max_seconds,
        progress=progress,
        desc="discrete flow matching",
    )
    gen = torch.Generator().manual_seed(seed if seed is not None else int(torch.randint(2**31, ())))
    if checkpoint is not None:
        trainer.keep_checkpoint(checkpoint, {"model": model}, gen, checkpoint_every)
    while trainer.running:
        idx = torch.randint(len(data), (min(batch_size, len(data)),), generator=gen).to(data.device)
        trainer.step(model.loss(data[idx], loss, validate=False))
    return trainer.close()


def _cosine(step: int, done: float) -> float:
    return 0.5 * (1 + math.cos(math.pi * min(done, 1.0)))
