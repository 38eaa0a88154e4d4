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

from pyroflows.training import NonFiniteLossError

__all__ = ["NonFiniteLossError", "fit"]


def learning_rate_factor(step: int, num_steps: int, warmup: float, final_lr: float) -> float:
    """Linear warm-up over the first ``warmup`` fraction of steps, then cosine
    decay from 1 to ``final_lr`` (a fraction of the initial rate)."""
    warm = max(1, int(warmup * num_steps))
    if step < warm:
        return (step + 1) / warm
    progress = (step - warm) / max(1, num_steps - warm)
    return final_lr + (1 - final_lr) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def _check_positive(name: str, value, kind=numbers.Real, optional: bool = False) -> None:
    if optional and value is None:
        return
    if not isinstance(value, kind) or isinstance(value, bool) or not 0 < value < math.inf:
        what = "a positive integer" if kind is numbers.Integral else "a positive, finite number"
        raise ValueError(f"{name} must be {what}{' or None' if optional else ''}, got {value!r}")


class _Stopper:
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
    _check_positive("num_steps", num_steps, numbers.Integral)
    _check_positive("lr", lr)
    _check_positive("num_particles", num_particles, numbers.Integral)
    _check_positive("clip_norm", clip_norm, optional=True)
    _check_positive("early_stopping", early_stopping, numbers.Integral, optional=True)
    _check_positive("max_seconds", max_seconds, optional=True)
    if not 0 <= warmup < 1:
        raise ValueError(f"warmup must be a fraction in [0, 1), got {warmup!r}")
    if not 0 <= average < 1:
        raise ValueError(f"average must be a fraction in [0, 1), got {average!r}")
    if not 0 < final_lr <= 1:
        raise ValueError(f"final_lr must be a fraction in (0, 1], got {final_lr!r}")
    if seed is not None:
        pyro.set_rng_seed(seed)
    elbo = loss or Trace_ELBO(
        num_particles=num_particles, vectorize_particles=vectorize_particles and num_particles > 1
    )
    optimizer: torch.optim.Optimizer | None = None
    params: list[torch.Tensor] = []
    good: list[torch.Tensor] = []
    losses: list[float] = []
    stopper = _Stopper(early_stopping) if early_stopping else None
    average_from = num_steps - int(average * num_steps) if average else num_steps
    averaged: list[torch.Tensor] | None = None
    count = 0
    start = time.perf_counter()
    # progress only on a terminal (a log file would get every redraw)
    bar = tqdm(range(num_steps), disable=None if progress else True, desc="fit", leave=False)
    with _quiet_plate_nesting_guess():
        for step in bar:
            try:
                with poutine.trace(param_only=True) as capture:
                    value = elbo.loss_and_grads(model, guide, *args, **kwargs)
            except (ValueError, RuntimeError) as err:
                if _loss_is_non_finite(elbo, model, guide, args, kwargs):  # e.g. Pyro's validation caught a NaN
                    _restore(params, good)
                    raise NonFiniteLossError(_message(step, "loss", err)) from err
                if step or loss is not None or not getattr(elbo, "vectorize_particles", False):
                    raise
                elbo = Trace_ELBO(num_particles=num_particles, vectorize_particles=False)
                with poutine.trace(param_only=True) as capture:
                    value = elbo.loss_and_grads(model, guide, *args, **kwargs)  # fails alike: its error is the real one
                warnings.warn(f"vectorised particles failed ({err}); using sequential particles", stacklevel=2)
            current = [site["value"].unconstrained() for site in capture.trace.nodes.values()]
            if optimizer is None or len(current) != len(params):
                params = current
                optimizer = torch.optim.Adam(params, lr=lr, foreach=True)
                good = [p.detach().clone() for p in params]
                averaged = None
            grads = [p.grad for p in params if p.grad is not None]
            # one global norm serves the finiteness check and the clipping (a single sync per step)
            norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads))).item() if grads else 0.0
            finite = math.isfinite(value) and math.isfinite(norm)
            if not finite:
                _restore(params, good)
                raise NonFiniteLossError(_message(step, "loss" if not math.isfinite(value) else "gradient", value))
            with torch.no_grad():
                torch._foreach_copy_(good, [p.data for p in params])
            if clip_norm is not None and norm > clip_norm:
                torch._foreach_mul_(grads, clip_norm / (norm + 1e-6))
            for group in optimizer.param_groups:
                group["lr"] = lr * learning_rate_factor(step, num_steps, warmup, final_lr)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if step >= average_from:
                count = 1 if averaged is None else count + 1
                with torch.no_grad():
                    if averaged is None:
                        averaged = [p.detach().clone() for p in params]
                    else:
                        torch._foreach_lerp_(averaged, [p.detach() for p in params], 1.0 / count)
            losses.append(value)
            if progress and step % 25 == 0:
                bar.set_postfix(loss=f"{np.mean(losses[-25:]):.4g}")
            if stopper is not None and stopper(losses):
                break
            if max_seconds is not None and time.perf_counter() - start > max_seconds:
                break
    bar.close()
    if averaged is not None:
        _restore(params, averaged)
    return np.asarray(losses)
