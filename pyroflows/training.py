"""The one training engine every family uses (the VI fit, flow matching,
discrete flow matching, image training): `Trainer` owns the loop's
shared pieces (non-finite detection, gradient clipping, the learning-rate
schedule, weight averaging, early stopping, ``max_seconds``, progress,
checkpoints) and each family keeps only its loss and its batches. It sits
below every family, so no loop imports another family.
"""

from __future__ import annotations

import math
import numbers
import os
import pickle
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

__all__ = [
    "EarlyStopping",
    "ExponentialAverage",
    "IterateAverage",
    "NonFiniteLossError",
    "Trainer",
    "warmup_cosine",
    "warmup_polynomial",
]


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


def warmup_polynomial(step: int, num_steps: int, warmup_steps: int, power: float = 1.0) -> float:
    """Linear warm-up over ``warmup_steps``, then polynomial decay
    ``(1 - progress) ** power`` to zero at ``num_steps``."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, num_steps - warmup_steps)
    return max(0.0, 1.0 - progress) ** power


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


class _Average:
    """What both averages share: ``count`` updates folded into ``values``
    (``None`` before the first), and their state for checkpoints."""

    count: int
    values: list[torch.Tensor] | None

    def average(self) -> list[torch.Tensor] | None:
        return self.values

    def state_dict(self) -> dict:
        return {"count": self.count, "values": self.values}

    def load_state_dict(self, state: dict) -> None:
        self.count, self.values = state["count"], state["values"]


class IterateAverage(_Average):
    """The running mean of parameters from step ``start`` on (Polyak-Ruppert)."""

    def __init__(self, start: int) -> None:
        self.start, self.count, self.values = start, 0, None

    def begin(self, params: list[torch.Tensor]) -> None:
        """Forget the average (a new or changed parameter list)."""
        self.count, self.values = 0, None

    @torch.no_grad()
    def update(self, step: int, params: list[torch.Tensor]) -> None:
        if step < self.start:
            return
        self.count += 1
        if self.values is None:
            self.values = [p.detach().clone() for p in params]
        else:
            torch._foreach_lerp_(self.values, [p.detach() for p in params], 1.0 / self.count)


class ExponentialAverage(_Average):
    """Exponential moving average of the parameters, starting from their
    values at `begin`; the decay is warmed up as
    ``min(decay, (1 + n) / (10 + n))`` after ``n`` updates, so short runs are
    not pulled back to the initial weights.

    Examples:
        >>> w = torch.nn.Parameter(torch.zeros(()))
        >>> average = ExponentialAverage(decay=0.5)
        >>> average.begin([w])
        >>> with torch.no_grad():
        ...     _ = w.fill_(1.0)
        >>> average.update(0, [w]); round(average.average()[0].item(), 3)
        0.818
    """

    def __init__(self, decay: float) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"ema must be in [0, 1) or None, got {decay!r}")
        self.decay, self.count, self.values = decay, 0, None

    def begin(self, params: list[torch.Tensor]) -> None:
        self.count, self.values = 0, [p.detach().clone() for p in params]

    @torch.no_grad()
    def update(self, step: int, params: list[torch.Tensor]) -> None:
        self.count += 1
        rate = min(self.decay, (1 + self.count) / (10 + self.count))
        torch._foreach_lerp_(self.values, [p.detach() for p in params], 1 - rate)


def clip_gradients(grads: list[torch.Tensor], clip_norm: float | None) -> float:
    """The global norm of ``grads`` (one sync), after scaling them in place to
    at most ``clip_norm``; NaN or infinite when any gradient is."""
    if not grads:
        return 0.0
    norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads))).item()
    if clip_norm is not None and math.isfinite(norm) and norm > clip_norm:
        torch._foreach_mul_(grads, clip_norm / (norm + 1e-6))
    return norm


def _params(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    return [p for group in optimizer.param_groups for p in group["params"]]


class Trainer:
    """The training loop's shared half: the caller computes each step's loss
    (its batches, its model) and hands it to `step`, which does the rest.

    ``schedule(step, done)`` multiplies each group's initial learning rate
    (``done``: the larger of the fraction of steps and of ``max_seconds``
    spent); ``clip_norm`` clips the global gradient norm; ``average`` (an
    `IterateAverage` or `ExponentialAverage`) is what the
    parameters hold after `close`; ``early_stopping`` (patience in steps)
    and ``max_seconds`` end the run early. A NaN or infinite loss (or, with
    ``clip_norm`` or ``restore``, whose norm it computes anyway, gradient)
    raises `NonFiniteLossError` naming ``loss_name``, the step and ``advice``; with
    ``restore`` the parameters are first put back to those that gave the last
    finite loss.

    Examples:
        >>> w = torch.nn.Parameter(torch.tensor(3.0))
        >>> trainer = Trainer(torch.optim.SGD([w], lr=0.1), steps=100, progress=False)
        >>> while trainer.running:
        ...     _ = trainer.step((w - 1) ** 2)
        >>> losses = trainer.close(); len(losses), round(w.item(), 3)
        (100, 1.0)
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer | None,
        steps: int,
        *,
        schedule: Callable[[int, float], float] | None = None,
        clip_norm: float | None = None,
        average: IterateAverage | ExponentialAverage | None = None,
        early_stopping: int | None = None,
        max_seconds: float | None = None,
        restore: bool = False,
        progress: bool = True,
        desc: str | None = None,
        start_step: int = 0,
        advice: str = "lower lr or check the data",
        loss_name: str = "loss",
    ) -> None:
        self.optimizer, self.steps, self.schedule, self.clip_norm = None, steps, schedule, clip_norm
        self.averager, self.restore, self.advice, self.loss_name = average, restore, advice, loss_name
        self.stopper = EarlyStopping(early_stopping) if early_stopping else None
        self.max_seconds, self.start = max_seconds, time.perf_counter()
        self.agreed_seconds: float | None = None  # processes that must stop together set a shared clock
        self.step_count, self.losses, self.stopped = start_step, [], False
        self.checkpoint: tuple | None = None
        self.pending: dict | None = None
        self.params: list[torch.Tensor] = []
        self.good: list[torch.Tensor] = []
        # progress only on a terminal (None), so a log file does not get every redraw
        self.bar = tqdm(total=steps, initial=start_step, disable=None if progress else True, desc=desc, leave=False)
        if optimizer is not None:
            optimizer.zero_grad(set_to_none=True)  # each step's backward then starts from none
            self.use(optimizer)

    def use(self, optimizer: torch.optim.Optimizer) -> None:
        """Train with ``optimizer`` from now on (a new parameter list restarts the average)."""
        self.optimizer, self.params = optimizer, _params(optimizer)
        for group in optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])
        if self.restore:
            self.good = [p.detach().clone() for p in self.params]
        if self.averager is not None:
            self.averager.begin(self.params)
        if self.pending is not None:  # a checkpoint loaded before the optimiser existed
            state, self.pending = self.pending, None
            self._load_optimizer_and_average(state)

    def done(self) -> float:
        """The fraction of the run spent, by steps or by ``max_seconds``."""
        fraction = self.step_count / self.steps
        if self.max_seconds is not None:
            fraction = max(fraction, self.seconds() / self.max_seconds)
        return fraction

    def fail(self, what: str, error: BaseException | None = None) -> None:
        """Restore the last good parameters (with ``restore``); raise `NonFiniteLossError` naming ``what``."""
        restored = ""
        if self.restore and self.params:
            with torch.no_grad():
                torch._foreach_copy_([p.data for p in self.params], self.good)
            restored = "; parameters restored to the last step with a finite loss"
        raise NonFiniteLossError(f"non-finite {what} at step {self.step_count}{restored}: {self.advice}") from error

    def step(self, loss: torch.Tensor | float, value: float | None = None) -> bool:
        """Back-propagate ``loss`` (a float: the gradients are already there),
        clip, check, schedule and take the optimiser step; True when the run
        should stop. ``value``: the loss to check and record, if not ``loss``'s
        (processes that must stop together pass their mean)."""
        if value is None:
            value = loss.item() if torch.is_tensor(loss) else float(loss)
        if not math.isfinite(value):
            self.fail(f"{self.loss_name}: {self.loss_name} is {value}")
        if torch.is_tensor(loss):
            loss.backward()  # the gradients were cleared after the last step
        if self.clip_norm is not None or self.restore:  # one sync more: only where the gradients are looked at
            norm = clip_gradients([p.grad for p in self.params if p.grad is not None], self.clip_norm)
            if not math.isfinite(norm):
                self.fail(f"gradient: its norm is {norm} ({self.loss_name} {value:.6g})")
        if self.restore:
            with torch.no_grad():
                torch._foreach_copy_(self.good, [p.data for p in self.params])
        if self.schedule is not None:
            factor = self.schedule(self.step_count, self.done())
            for group in self.optimizer.param_groups:
                group["lr"] = group["initial_lr"] * factor
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.averager is not None:
            self.averager.update(self.step_count, self.params)
        self.losses.append(value)
        self.step_count += 1
        self.bar.update()
        if self.step_count % 25 == 0:
            self.bar.set_postfix(loss=f"{np.mean(self.losses[-25:]):.4g}", refresh=False)
        if self.checkpoint is not None and self.step_count % self.checkpoint[3] == 0:
            self._save()
        self.stopped = (
            self.step_count >= self.steps
            or (self.stopper is not None and self.stopper(self.losses))
            or (self.max_seconds is not None and self.seconds() > self.max_seconds)
        )
        return self.stopped

    def seconds(self) -> float:
        """Seconds since the start, or ``agreed_seconds`` (data-parallel processes' shared clock)."""
        return time.perf_counter() - self.start if self.agreed_seconds is None else self.agreed_seconds

    @property
    def running(self) -> bool:
        """Whether the loop should take another step."""
        return not self.stopped and self.step_count < self.steps

    def keep_checkpoint(
        self,
        path: str | Path,
        modules: dict,
        generator: torch.Generator | None = None,
        every: int = 500,
        on_load: Callable[[], None] | None = None,
        write: bool = True,
    ) -> None:
        """Resume from ``path`` if it exists (the ``modules``' weights, this
        trainer's state and the batch ``generator``); from then on save there
        every ``every`` steps and at `close`, atomically. ``on_load`` runs
        after the weights and before the random state are restored (a set-up
        that draws random numbers, which the interrupted run did before).
        ``write=False``: gather the state (modules may gather across
        processes) but leave the writing to another process."""
        check_positive("checkpoint_every", every, numbers.Integral)
        self.checkpoint = (Path(path), modules, generator, every, write)
        if self.checkpoint[0].exists():
            state = load_checkpoint(path, ("trainer", "generator", *modules))
            for name, module in modules.items():
                module.load_state_dict(state[name])
            if on_load is not None:
                on_load()
            self.load_state_dict(state["trainer"])
            if generator is not None:
                generator.set_state(state["generator"])

    def _save(self) -> None:
        path, modules, generator, _, write = self.checkpoint
        weights = {name: module.state_dict() for name, module in modules.items()}
        state = {"trainer": self.state_dict(), "generator": None if generator is None else generator.get_state()}
        if write:
            save_checkpoint(path, {**weights, **state})

    def state_dict(self) -> dict:
        """What a resumed run needs to go on exactly: the step, the losses, the
        optimiser, the average, early stopping's record and torch's RNG."""
        return {
            "step": self.step_count,
            "losses": list(self.losses),
            "optimizer": self.optimizer.state_dict(),
            "average": None if self.averager is None else self.averager.state_dict(),
            "stopper": None if self.stopper is None else (self.stopper.best, self.stopper.best_step),
            "torch_rng": torch.get_rng_state(),
        }

    def load_state_dict(self, state: dict) -> None:
        """Go on from ``state``; without an optimiser yet (``fit`` makes it at
        the first step) its state and the average's wait for :meth:`use`."""
        self.step_count, self.losses = state["step"], list(state["losses"])
        if self.optimizer is None:
            self.pending = state
        else:
            self._load_optimizer_and_average(state)
        if self.stopper is not None and state["stopper"] is not None:
            self.stopper.best, self.stopper.best_step = state["stopper"]
        torch.set_rng_state(state["torch_rng"])
        self.bar.reset(total=self.steps)
        self.bar.update(self.step_count)

    def _load_optimizer_and_average(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        if self.averager is not None and state["average"] is not None:
            self.averager.load_state_dict(state["average"])

    def close(self) -> list[float]:
        """Save the checkpoint (if kept), put the average (if any) into the parameters, close the bar; the losses."""
        if self.checkpoint is not None:
            self._save()  # the raw parameters: a resumed run goes on from them
        self.bar.close()
        average = None if self.averager is None else self.averager.average()
        if average is not None:
            with torch.no_grad():
                torch._foreach_copy_([p.data for p in self.params], average)
        return self.losses


def save_checkpoint(path: str | Path, state: dict) -> None:
    """``torch.save`` to a temporary file, then rename (a killed write leaves the last checkpoint whole)."""
    path = Path(path)
    temporary = path.with_name(path.name + ".tmp")
    torch.save(state, temporary)
    os.replace(temporary, path)


def load_checkpoint(path: str | Path, keys: Sequence[str], map_location=None) -> dict:
    """A checkpoint written by :func:`save_checkpoint` with at least ``keys``,
    or a ``ValueError`` saying that the file is damaged."""
    try:
        state = torch.load(path, map_location=map_location, weights_only=False)  # holds pickled records
    except (EOFError, OSError, RuntimeError, pickle.UnpicklingError, ValueError) as err:
        raise ValueError(f"checkpoint {path} is corrupted or incomplete ({err}); delete it to start afresh") from err
    if not isinstance(state, dict) or any(key not in state for key in keys):
        raise ValueError(f"checkpoint {path} is corrupted or incomplete: expected the keys {tuple(keys)}")
    return state
