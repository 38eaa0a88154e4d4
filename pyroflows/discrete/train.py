"""The training loop for discrete flow matching (and the autoregressive baseline)."""

from __future__ import annotations

import math
import numbers
import time

import torch
from tqdm.auto import tqdm

from pyroflows.nn.ema import WeightAverage
from pyroflows.training import NonFiniteLossError, check_positive

__all__ = ["train"]


def train(
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
) -> list[float]:
    """Adam on ``model.loss(batch, loss)`` over random minibatches of ``data`` (int64 rows).

    Works for :class:`~pyroflows.discrete.DiscreteFlowMatcher` (``loss`` ``"ce"``
    or ``"kl"``) and :class:`~pyroflows.discrete.AutoregressiveModel` (``"nll"``).
    Stops after ``steps`` steps or ``max_seconds`` of wall time, whichever comes
    first. With ``ema`` the model ends with an exponential moving average of its
    weights (:class:`~pyroflows.nn.ema.WeightAverage`). With ``decay`` each learning
    rate follows a cosine from its initial value to zero over the run, whose progress is the larger
    of the step fraction and the fraction of ``max_seconds`` spent. Raises
    :class:`~pyroflows.training.NonFiniteLossError` on a NaN/Inf loss.
    Returns the losses."""
    check_positive("steps", steps, numbers.Integral)
    check_positive("batch_size", batch_size, numbers.Integral)
    model.validate_data(data)
    model.loss(data[:1], loss)  # checks the loss name once
    average = None if ema is None else WeightAverage([p for p in model.parameters() if p.requires_grad], ema)
    opt = optimizer or torch.optim.Adam(model.parameters(), lr=lr)
    base_rates = [group["lr"] for group in opt.param_groups]
    gen = torch.Generator().manual_seed(seed if seed is not None else int(torch.randint(2**31, ())))
    losses: list[float] = []
    start = time.perf_counter()
    bar = tqdm(range(steps), disable=None if progress else True, desc="discrete flow matching")
    for step in bar:
        if decay:
            done = (
                step / steps if max_seconds is None else max(step / steps, (time.perf_counter() - start) / max_seconds)
            )
            for group, base in zip(opt.param_groups, base_rates, strict=True):
                group["lr"] = base * 0.5 * (1 + math.cos(math.pi * min(done, 1.0)))
        idx = torch.randint(len(data), (min(batch_size, len(data)),), generator=gen).to(data.device)
        objective = model.loss(data[idx], loss, validate=False)
        value = objective.item()
        if not math.isfinite(value):
            raise NonFiniteLossError(f"loss is {value} at step {step}: lower lr or check the data")
        opt.zero_grad(set_to_none=True)
        objective.backward()
        opt.step()
        if average is not None:
            average.update()
        losses.append(value)
        if progress and step % 50 == 0:
            bar.set_postfix(loss=f"{losses[-1]:.4f}")
        if max_seconds is not None and time.perf_counter() - start > max_seconds:
            break
    if average is not None:
        average.copy_to_params()
    return losses
