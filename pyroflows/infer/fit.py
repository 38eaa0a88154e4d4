"""``fit``: stochastic variational inference with sensible defaults."""

from __future__ import annotations

import contextlib
import logging
import math
import numbers
import time
import warnings

import numpy as np
import pyro
import torch
from pyro import poutine
from pyro.infer import ELBO, Trace_ELBO
from tqdm.auto import tqdm

from pyroflows.training import (
    EarlyStopping,
    IterateAverage,
    NonFiniteLossError,
    check_positive,
    clip_gradients,
    warmup_cosine,
)

learning_rate_factor = warmup_cosine  # the schedule's earlier name

__all__ = ["NonFiniteLossError", "fit"]


def _loss_is_non_finite(elbo: ELBO, model, guide, args, kwargs) -> bool:
    """Whether the loss, evaluated again without Pyro's validation (which
    turns a NaN parameter into a ValueError), is NaN or infinite; an error
    that is not about values (a shape, a missing site) raises again: False."""
    try:
        with torch.no_grad(), pyro.validation_enabled(False):
            return not math.isfinite(elbo.loss(model, guide, *args, **kwargs))
    except (ValueError, RuntimeError):
        return False


class _NoGuessMessage(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Guessed max_plate_nesting")


@contextlib.contextmanager
def _quiet_plate_nesting_guess():
    """Drop Pyro's "Guessed max_plate_nesting" INFO line (it breaks the progress bar)."""
    logger, quiet = logging.getLogger("pyro.infer.elbo"), _NoGuessMessage()
    logger.addFilter(quiet)
    try:
        yield
    finally:
        logger.removeFilter(quiet)


def _restore(params: list[torch.Tensor], good: list[torch.Tensor]) -> None:
    if params:
        with torch.no_grad():
            torch._foreach_copy_([p.data for p in params], good)


def _message(step: int, what: str, detail) -> str:
    return (
        f"non-finite {what} at step {step} ({str(detail).splitlines()[0][:200]}); parameters restored to the "
        "last step with a finite loss. Try a smaller lr, a tighter clip_norm, or check the model for invalid values."
    )


def _check_options(num_steps, lr, num_particles, clip_norm, early_stopping, max_seconds, warmup, average, final_lr):
    check_positive("num_steps", num_steps, numbers.Integral)
    check_positive("lr", lr)
    check_positive("num_particles", num_particles, numbers.Integral)
    check_positive("clip_norm", clip_norm, optional=True)
    check_positive("early_stopping", early_stopping, numbers.Integral, optional=True)
    check_positive("max_seconds", max_seconds, optional=True)
    if not 0 <= warmup < 1:
        raise ValueError(f"warmup must be a fraction in [0, 1), got {warmup!r}")
    if not 0 <= average < 1:
        raise ValueError(f"average must be a fraction in [0, 1), got {average!r}")
    if not 0 < final_lr <= 1:
        raise ValueError(f"final_lr must be a fraction in (0, 1], got {final_lr!r}")


def fit(
    model,
    guide,
    *args,
    num_steps: int = 2000,
    lr: float = 5e-3,
    warmup: float = 0.05,
    final_lr: float = 0.05,
    clip_norm: float | None = 10.0,
    average: float = 0.2,
    num_particles: int = 8,
    vectorize_particles: bool = True,
    loss: ELBO | None = None,
    early_stopping: int | None = None,
    max_seconds: float | None = None,
    progress: bool = True,
    seed: int | None = None,
    **kwargs,
) -> np.ndarray:
    """Fit ``guide`` to ``model`` by SVI; return the loss (negative ELBO) per step.

    Adam on all of the guide's (and model's) parameters, learning rate warmed
    up linearly over the first ``warmup`` fraction of steps then cosine-decayed
    to ``final_lr * lr``; gradients clipped to global norm ``clip_norm``;
    ``Trace_ELBO`` with ``num_particles`` particles, vectorised when the model
    allows (else sequential, with a warning). Works with any Pyro guide.
    Over the last ``average`` fraction of steps (0: off) the parameters are
    averaged (Polyak-Ruppert), and the average is what the guide keeps: it
    removes most of the final iterate's gradient noise at no cost.

    A NaN or infinite loss or gradient restores the parameters that produced
    the last finite loss and raises :class:`NonFiniteLossError`. Optional
    ``early_stopping`` (patience in steps) and ``max_seconds`` stop early.
    ``*args, **kwargs`` go to the model and guide.

    Example:
        >>> import pyro.distributions as dist
        >>> from pyro.infer.autoguide import AutoNormal
        >>> def model():
        ...     pyro.sample("x", dist.Normal(3.0, 1.0))
        >>> losses = fit(model, AutoNormal(model), num_steps=300, lr=0.05, progress=False, seed=0)
        >>> len(losses)
        300
    """
    _check_options(num_steps, lr, num_particles, clip_norm, early_stopping, max_seconds, warmup, average, final_lr)
    if seed is not None:
        pyro.set_rng_seed(seed)
    elbo = loss or Trace_ELBO(
        num_particles=num_particles, vectorize_particles=vectorize_particles and num_particles > 1
    )
    state = _State()
    losses: list[float] = []
    stopper = EarlyStopping(early_stopping) if early_stopping else None
    average_ = IterateAverage(num_steps - int(average * num_steps) if average else num_steps)
    start = time.perf_counter()
    # progress only on a terminal (a log file would get every redraw)
    bar = tqdm(range(num_steps), disable=None if progress else True, desc="fit", leave=False)
    with _quiet_plate_nesting_guess():
        for step in bar:
            value, elbo, current = _loss_and_grads(elbo, model, guide, args, kwargs, step, state, loss is None)
            optimizer = state.track(current, lr, average_)
            norm = clip_gradients([p.grad for p in state.params if p.grad is not None], clip_norm)
            if not (math.isfinite(value) and math.isfinite(norm)):
                _restore(state.params, state.good)
                raise NonFiniteLossError(_message(step, "loss" if not math.isfinite(value) else "gradient", value))
            with torch.no_grad():
                torch._foreach_copy_(state.good, [p.data for p in state.params])
            for group in optimizer.param_groups:
                group["lr"] = lr * warmup_cosine(step, num_steps, warmup, final_lr)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            average_.update(step, state.params)
            losses.append(value)
            if progress and step % 25 == 0:
                bar.set_postfix(loss=f"{np.mean(losses[-25:]):.4g}")
            if (stopper is not None and stopper(losses)) or (
                max_seconds is not None and time.perf_counter() - start > max_seconds
            ):
                break
    bar.close()
    if average_.mean is not None:
        _restore(state.params, average_.mean)
    return np.asarray(losses)


class _State:
    """The parameters being trained, their optimiser and last good values."""

    def __init__(self) -> None:
        self.params: list[torch.Tensor] = []
        self.good: list[torch.Tensor] = []
        self.optimizer: torch.optim.Optimizer | None = None

    def track(self, current: list[torch.Tensor], lr: float, average: IterateAverage) -> torch.optim.Optimizer:
        """The optimiser, rebuilt (and the average reset) when the parameter list changes."""
        if self.optimizer is None or len(current) != len(self.params):
            self.params = current
            self.optimizer = torch.optim.Adam(current, lr=lr, foreach=True)
            self.good = [p.detach().clone() for p in current]
            average.reset()
        return self.optimizer


def _loss_and_grads(elbo, model, guide, args, kwargs, step: int, state: _State, may_fall_back: bool):
    """One loss and backward; the parameters it touched. A NaN or infinite
    loss raises (parameters restored); at step 0 a vectorisation failure falls
    back to sequential particles (warned only once they work)."""
    try:
        with poutine.trace(param_only=True) as capture:
            value = elbo.loss_and_grads(model, guide, *args, **kwargs)
    except (ValueError, RuntimeError) as err:
        if _loss_is_non_finite(elbo, model, guide, args, kwargs):  # e.g. Pyro's validation caught a NaN
            _restore(state.params, state.good)
            raise NonFiniteLossError(_message(step, "loss", err)) from err
        if step or not may_fall_back or not getattr(elbo, "vectorize_particles", False):
            raise
        elbo = Trace_ELBO(num_particles=elbo.num_particles, vectorize_particles=False)
        with poutine.trace(param_only=True) as capture:
            value = elbo.loss_and_grads(model, guide, *args, **kwargs)  # fails alike: its error is the real one
        warnings.warn(f"vectorised particles failed ({err}); using sequential particles", stacklevel=3)
    return value, elbo, [site["value"].unconstrained() for site in capture.trace.nodes.values()]
