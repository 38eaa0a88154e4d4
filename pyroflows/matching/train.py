"""Training loops for flow matching, rectified flow (reflow) and one-step distillation."""

from __future__ import annotations

import numbers
from pathlib import Path

import torch

from pyroflows.matching.model import FlowMatcher
from pyroflows.training import ExponentialAverage, Trainer, check_positive

__all__ = ["distill", "reflow", "reflow_pairs", "straightness", "train_matcher"]


def _check_rows(name: str, value: torch.Tensor | None, n: int) -> None:
    if value is not None and (not torch.is_tensor(value) or len(value) != n):
        got = type(value).__name__ if not torch.is_tensor(value) else f"{len(value)} rows"
        raise ValueError(f"{name} must be a tensor with one row per data point ({n}), got {got}")


def _adam(module: torch.nn.Module, lr: float) -> torch.optim.Optimizer:
    """Adam, fused (one kernel for all parameters) where torch supports it."""
    params = [p for p in module.parameters() if p.requires_grad]
    fused = all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)
    return torch.optim.Adam(params, lr=lr, fused=fused or None)


def train_matcher(
    matcher: FlowMatcher,
    x_1: torch.Tensor,
    steps: int,
    batch_size: int = 256,
    lr: float = 1e-3,
    x_0: torch.Tensor | None = None,
    context: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
    one_step: bool = False,
    optimizer: torch.optim.Optimizer | None = None,
    seed: int | None = None,
    progress: bool = True,
    ema: float | None = 0.999,
    checkpoint: str | Path | None = None,
    checkpoint_every: int = 500,
) -> list[float]:
    """Adam on the flow-matching loss over minibatches of ``x_1`` (rows).

    ``x_0`` (one row per data point) trains on fixed pairs (reflow);
    ``context`` / ``labels`` are indexed with the data; ``one_step`` trains at
    ``t = 0`` only (distillation to a one-step generator). ``ema``: the model
    ends with an exponential moving average of its weights (decay ``ema``,
    warmed up as ``min(ema, (1 + n) / (10 + n))`` after ``n`` updates, so short
    runs are not pulled back to the initial weights); ``None`` keeps the last
    weights. With ``checkpoint`` (a path) the run saves its state there every
    ``checkpoint_every`` steps and at the end, and a run started on an existing
    file resumes it exactly (to ``steps`` in all). Raises
    `NonFiniteLossError` on a NaN/Inf loss.
    Returns the losses."""
    check_positive("steps", steps, numbers.Integral)
    check_positive("batch_size", batch_size, numbers.Integral)
    n = len(x_1)
    for name, value in (("x_0", x_0), ("context", context), ("labels", labels)):
        _check_rows(name, value, n)
    matcher.validate_data(x_1, x_0, context)  # once: batches are then drawn unchecked
    average = None if ema is None else ExponentialAverage(ema)
    trainer = Trainer(optimizer or _adam(matcher, lr), steps, average=average, progress=progress, desc="flow matching")
    gen = torch.Generator(device="cpu")
    gen.manual_seed(seed if seed is not None else int(torch.randint(2**31, ())))
    if checkpoint is not None:
        trainer.keep_checkpoint(checkpoint, {"model": matcher}, gen, checkpoint_every)
    while trainer.running:
        idx = torch.randint(n, (min(batch_size, n),), generator=gen).to(x_1.device)
        t = torch.zeros(len(idx), dtype=x_1.dtype, device=x_1.device) if one_step else None
        pick = [None if v is None else v[idx] for v in (x_0, context, labels)]
        trainer.step(matcher.loss(x_1[idx], x_0=pick[0], context=pick[1], labels=pick[2], t=t, validate=False))
    return trainer.close()


def reflow_pairs(
    matcher: FlowMatcher,
    num_pairs: int,
    steps: int = 100,
    method: str = "euler",
    context: torch.Tensor | None = None,
    batch_size: int = 4096,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw ``x_0`` from the source and push it through the model: the coupled
    pairs ``(x_0, x_1)`` that rectified flow retrains on (Liu et al. 2022)."""
    x_0 = matcher.sample_source((num_pairs,))
    chunks = []
    for start in range(0, num_pairs, batch_size):
        ctx = None if context is None else context[start : start + batch_size]
        chunks.append(matcher.sample(x_0[start : start + batch_size], steps=steps, method=method, context=ctx))
    return x_0, torch.cat(chunks)


def reflow(
    matcher: FlowMatcher,
    rounds: int = 1,
    num_pairs: int = 10_000,
    steps: int = 1000,
    sample_steps: int = 100,
    **train_options,
) -> list[list[float]]:
    """``rounds`` of rectification: generate pairs with the current model, then
    keep training it on those pairs (straighter paths, fewer steps needed).
    Returns each round's losses."""
    if not isinstance(rounds, int) or rounds < 1:
        raise ValueError(f"rounds must be a positive int, got {rounds!r}")
    history = []
    for _ in range(rounds):
        x_0, x_1 = reflow_pairs(matcher, num_pairs, steps=sample_steps)
        history.append(train_matcher(matcher, x_1, steps, x_0=x_0, **train_options))
    return history


def distill(matcher: FlowMatcher, x_0: torch.Tensor, x_1: torch.Tensor, steps: int, **train_options) -> list[float]:
    """Distil pairs into a one-step generator ``x_1 = x_0 + v(x_0, 0)`` (train at ``t = 0``);
    sample it with ``matcher.sample(x_0, steps=1)``."""
    return train_matcher(matcher, x_1, steps, x_0=x_0, one_step=True, **train_options)


@torch.no_grad()
def straightness(matcher: FlowMatcher, x_0: torch.Tensor, steps: int = 100, context=None) -> float:
    """Normalised path energy ``E[int |v|^2 dt] / E[|x_1 - x_0|^2] - 1``: zero for
    straight paths at constant speed, larger for curved ones."""
    path = matcher.sample(x_0, steps=steps, method="euler", context=context, return_path=True)
    increments = (path[1:] - path[:-1]).flatten(2)
    energy = increments.pow(2).sum(-1).sum(0).mul(steps).mean()
    displacement = (path[-1] - path[0]).flatten(1).pow(2).sum(-1).mean()
    return (energy / displacement).item() - 1.0
