"""``fit``: stochastic variational inference with sensible defaults."""

from __future__ import annotations

import contextlib
import logging
import math
import numbers
import time
import warnings
from pathlib import Path

import numpy as np
import pyro
import torch
from pyro import poutine
from pyro.infer import ELBO, Trace_ELBO

from pyroflows.distributed import all_average, broadcast, rank_and_world, setup_distributed
from pyroflows.infer.data_parallel import all_agree, average_gradients, prepare, together
from pyroflows.infer.particles import choose_particles
from pyroflows.infer.stopping import StopRule
from pyroflows.training import IterateAverage, NonFiniteLossError, Trainer, check_positive, warmup_cosine

__all__ = ["NonFiniteLossError", "StopRule", "fit"]
logger = logging.getLogger("pyroflows.fit")


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


def _check_options(num_steps, lr, num_particles, clip_norm, early_stopping, max_seconds, warmup, average, final_lr):
    check_positive("num_steps", num_steps, numbers.Integral)
    check_positive("lr", lr)
    if num_particles != "auto":
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
    num_particles: int | str = "auto",
    vectorize_particles: bool = True,
    loss: ELBO | None = None,
    early_stopping: int | None = None,
    max_seconds: float | None = None,
    progress: bool = True,
    seed: int | None = None,
    checkpoint: str | Path | None = None,
    checkpoint_every: int = 500,
    stop: StopRule | str | None = "auto",
    data_plate: str | None = None,
    **kwargs,
) -> np.ndarray:
    """Fit ``guide`` to ``model`` by SVI; return the loss (negative ELBO) per step.

    Stops when the answer is good (``stop="auto"``, a `StopRule`: annealed
    cycles until PSIS k-hat < 0.5 and two cycles agree; ``num_steps`` and
    ``max_seconds`` are caps); ``stop=None`` runs exactly ``num_steps``.
    Adam, the rate warmed up over ``warmup`` of a run (or cycle), cosine-
    decayed to ``final_lr * lr``, parameters averaged over its last
    ``average``; gradients clipped to ``clip_norm``; ``Trace_ELBO`` with
    ``num_particles`` vectorised particles (``"auto"``: as many as cost
    little more than 8, timed on the model; give a number for runs that
    repeat bit for bit), or ``loss``. A non-finite loss or gradient
    restores the last finite parameters and raises `NonFiniteLossError`.
    ``early_stopping``: a patience in steps; ``checkpoint``: a path saved
    every ``checkpoint_every`` steps and resumed from (under ``torchrun`` by
    process 0, read by all), ``data_plate``: under ``torchrun``, the plate
    over each process's shard. ``*args, **kwargs``: the model's.

    Examples:
        >>> import pyro.distributions as dist
        >>> from pyro.infer.autoguide import AutoNormal
        >>> def model():
        ...     pyro.sample("x", dist.Normal(3.0, 1.0))
        >>> losses = fit(model, AutoNormal(model), lr=0.05, progress=False, seed=0)
        >>> len(losses)  # converged after two cycles of 300 steps
        600
    """
    _check_options(num_steps, lr, num_particles, clip_norm, early_stopping, max_seconds, warmup, average, final_lr)
    world, progress, rule = _processes(data_plate, seed, progress, _stop_rule(stop))
    trainer = _trainer(num_steps, warmup, final_lr, average, clip_norm, early_stopping, max_seconds, progress, rule)
    elbo = _Elbo(loss, num_particles, vectorize_particles)
    problem = _Problem(model, guide, args, kwargs, data_plate, seed)
    if checkpoint is not None:  # loads the param store: before the guide's first run
        _keep_checkpoint(trainer, checkpoint, checkpoint_every, elbo, problem, rule)
    model, guide, _, _ = problem
    with _quiet_plate_nesting_guess():
        _run(trainer, rule, elbo.get(problem), model, guide, args, kwargs, lr, average, loss is None, world)
    return _finish(trainer, rule)


def _finish(trainer: Trainer, rule: StopRule | None) -> np.ndarray:
    losses = np.asarray(trainer.close())
    if rule is not None:
        _report(rule, trainer.step_count)
    return losses


def _processes(plate, seed, progress, rule):
    """Seed Pyro; number of processes, progress and rule for this process
    (under torchrun: progress on process 0 only, the rule for a shard)."""
    if plate is not None and not isinstance(plate, str):
        raise TypeError(f"data_plate must be a plate's name (str) or None, got {plate!r}")
    if seed is not None:
        pyro.set_rng_seed(seed)
    rank, world = setup_distributed()
    if world > 1:
        progress, rule = progress and rank == 0, rule and rule.sharded()
    return world, progress, rule


class _Problem:
    """Model, guide and their arguments; under torchrun the model and guide
    are prepared for this process's shard (`prepare`) at first use, which
    comes after a checkpoint's param store has loaded."""

    def __init__(self, model, guide, args, kwargs, plate, seed) -> None:
        self.model, self.guide, self.args, self.kwargs, self.plate, self.seed = model, guide, args, kwargs, plate, seed
        self.ready = rank_and_world()[1] == 1

    def __iter__(self):
        if not self.ready:
            self.ready = True
            self.model, self.guide = prepare(self.model, self.guide, self.plate, self.args, self.kwargs, self.seed)
        return iter((self.model, self.guide, self.args, self.kwargs))


def _run(trainer: Trainer, rule, elbo, model, guide, args, kwargs, lr, average, may_fall_back, world) -> None:
    """The step loop: loss and gradients (averaged across processes), the
    optimiser step, and the stop rule's checks at the end of each cycle."""
    problem = (model, guide, args, kwargs)
    while trainer.running:
        with together(trainer.step_count):  # one process fails: all stop
            value, elbo, params = _loss_and_grads(elbo, model, guide, args, kwargs, trainer, may_fall_back)
        if trainer.optimizer is None or len(params) != len(trainer.params):
            trainer.use(torch.optim.Adam(params, lr=lr, foreach=True))  # Pyro made new parameters
        if world > 1:
            value, trainer.agreed_seconds = average_gradients(params, value, time.perf_counter() - trainer.start)
        trainer.step(value)
        if rule is not None and rule.after_step(trainer.step_count, trainer.params, average):
            with together(trainer.step_count):
                converged = rule.end_cycle(trainer.step_count, trainer.params, *problem, _nesting(elbo))
            trainer.stopped = all_agree(converged) if world > 1 else converged
    if rule is not None and rule.mid_cycle:  # a time cap cut the cycle short
        rule.end_cycle(trainer.step_count, trainer.params, *problem, _nesting(elbo))


def _stop_rule(stop) -> StopRule | None:
    if isinstance(stop, str) and stop == "auto":
        return StopRule()
    if isinstance(stop, StopRule):
        stop.reset()
    if stop is None or isinstance(stop, StopRule):
        return stop
    raise TypeError(f"stop must be a StopRule, 'auto' or None, got {stop!r}")


def _nesting(elbo: ELBO) -> int:
    """The model's plate nesting as the ELBO found it (7, Pyro's bound, if
    unknown), less the particle plate a vectorised ELBO counts in it."""
    nesting = getattr(elbo, "max_plate_nesting", math.inf)
    if not math.isfinite(nesting):
        return 7
    vectorised = getattr(elbo, "vectorize_particles", False) and elbo.num_particles > 1
    return int(nesting) - int(vectorised)


def _report(rule: StopRule, step: int) -> None:
    """Say why a run with a stop rule ended; warn when it ended at a cap with an unreliable k-hat."""
    if rule.converged:
        logger.info(rule.reason)
        return
    reason = rule.capped(step)
    if rule.checks and rule.checks[-1][1] >= 0.7:
        warnings.warn(f"fit {reason}: the guide is not a reliable posterior approximation", stacklevel=4)
    else:
        logger.info(reason)


class _Elbo:
    """fit's ELBO, built at first use: ``loss``, or ``Trace_ELBO`` with the
    particles given or chosen (``"auto"``, timed on the model); the particle
    count is a checkpoint entry, so a resumed run keeps the interrupted one's."""

    def __init__(self, loss: ELBO | None, num_particles, vectorize: bool) -> None:
        self.loss, self.num_particles, self.vectorize, self.built = loss, num_particles, vectorize, loss

    def get(self, problem) -> ELBO:
        if self.built is None:
            if self.num_particles == "auto":
                self.num_particles = _auto_particles(*problem)
            num = self.num_particles
            self.built = Trace_ELBO(num_particles=num, vectorize_particles=self.vectorize and num > 1)
        return self.built

    def state_dict(self) -> dict:
        return {"num_particles": None if self.loss is not None else self.num_particles}

    def load_state_dict(self, state: dict) -> None:
        if self.loss is None:
            self.num_particles = state["num_particles"]


def _auto_particles(model, guide, args, kwargs) -> int:
    """``num_particles="auto"`` (process 0's choice under torchrun)."""
    with _quiet_plate_nesting_guess():
        num = torch.tensor([choose_particles(model, guide, args, kwargs)])
    if rank_and_world()[1] > 1:
        broadcast([num])
    logger.info("num_particles='auto': %d particles", int(num))
    return int(num)


def _keep_checkpoint(trainer: Trainer, path, every: int, elbo: _Elbo, problem, rule) -> None:
    """Save the param store, the run, the ELBO's particles and the stop rule
    to ``path`` as it goes; resume from it if it exists, replaying step 0's
    set-up first (the guide's and the ELBO's random draws)."""

    def prime() -> None:
        elbo.built = _prime(elbo.get(problem), *problem, elbo.loss is None)

    rank, world = rank_and_world()
    modules = {"param_store": _ParamStoreState(), "particles": elbo, "stop_rule": _RuleState(rule)}
    if world > 1:
        _check_readable(Path(path))
        modules["process_rng"] = _ProcessRngs()
    trainer.keep_checkpoint(path, modules, None, every, prime, write=rank == 0)
    if world > 1:
        modules["process_rng"].restore()


def _check_readable(path: Path) -> None:
    """Every data-parallel process must see the checkpoint, or none."""
    seen = torch.tensor([float(path.exists())])
    all_average([seen])  # the fraction of processes that see it
    if 0 < seen.item() < 1:
        raise ValueError(f"checkpoint {path} exists for some processes only: give a path every process can read")


class _ProcessRngs:
    """Each data-parallel process's torch random state (processes that draw
    differently many numbers, e.g. shards of unequal size, part ways)."""

    def __init__(self) -> None:
        self.loaded = None

    def state_dict(self) -> torch.Tensor:
        """Every process's state, one row each (gathered through a sum: no object collectives)."""
        rank, world = rank_and_world()
        state = torch.get_rng_state()
        rows = torch.zeros(world, len(state), dtype=torch.float64)
        rows[rank] = state.double()
        all_average([rows])
        return (rows * world).round().to(torch.uint8)

    def load_state_dict(self, states: torch.Tensor) -> None:
        rank, world = rank_and_world()
        if len(states) == world:  # else resumed on another number of processes: process 0's state (the trainer's)
            self.loaded = states[rank].clone()  # torch.set_rng_state crashes on a view with an offset

    def restore(self) -> None:
        if self.loaded is not None:
            torch.set_rng_state(self.loaded)


class _RuleState:
    """The stop rule (or its absence) as a checkpoint entry."""

    def __init__(self, rule: StopRule | None) -> None:
        self.rule = rule

    def state_dict(self) -> dict | None:
        return None if self.rule is None else self.rule.state_dict()

    def load_state_dict(self, state: dict | None) -> None:
        if (state is None) != (self.rule is None):
            raise ValueError("the checkpoint was written with a different stop rule setting; resume with the same")
        if self.rule is not None:
            self.rule.load_state_dict(state)


def _prime(elbo: ELBO, model, guide, args, kwargs, may_fall_back: bool) -> ELBO:
    """The loss once, without gradients: the guide sets itself up (from the
    loaded param store) and the ELBO guesses its plate nesting, as at step 0,
    falling back to sequential particles as step 0 would."""
    try:
        with torch.no_grad():
            elbo.loss(model, guide, *args, **kwargs)
    except (ValueError, RuntimeError):
        elbo = _sequential(elbo, may_fall_back)
        if elbo is None:
            raise
    return elbo


def _sequential(elbo: ELBO, may_fall_back: bool) -> ELBO | None:
    """The sequential-particles ELBO to fall back on when vectorising fails, or ``None`` where fit may not."""
    if not may_fall_back or not getattr(elbo, "vectorize_particles", False):
        return None
    return Trace_ELBO(num_particles=elbo.num_particles, vectorize_particles=False)


class _ParamStoreState:
    """Pyro's global param store as a checkpoint entry."""

    def state_dict(self) -> dict:
        return pyro.get_param_store().get_state()

    def load_state_dict(self, state: dict) -> None:
        pyro.get_param_store().set_state(state)


def _trainer(num_steps, warmup, final_lr, average, clip_norm, early_stopping, max_seconds, progress, rule) -> Trainer:
    """fit's schedule, clipping, iterate average and stopping rules; the optimiser comes with the first step."""
    if rule is None:
        schedule = lambda step, done: warmup_cosine(step, num_steps, warmup, final_lr)  # noqa: E731
    else:  # the same schedule, cycle by cycle
        schedule = lambda step, done: rule.lr_factor(step, warmup, final_lr, num_steps)  # noqa: E731
    return Trainer(
        None,
        num_steps,
        schedule=schedule,
        clip_norm=clip_norm,
        average=IterateAverage(num_steps - int(average * num_steps)) if average and rule is None else None,
        early_stopping=early_stopping,
        max_seconds=max_seconds,
        restore=True,
        progress=progress,
        desc="fit",
        advice="try a smaller lr, a tighter clip_norm, or check the model for invalid values",
    )


def _loss_and_grads(elbo, model, guide, args, kwargs, trainer: Trainer, may_fall_back: bool):
    """One loss and backward; the parameters it touched. A NaN or infinite
    loss raises (parameters restored); at step 0 a vectorisation failure falls
    back to sequential particles (warned only once they work)."""
    try:
        with poutine.trace(param_only=True) as capture:
            value = elbo.loss_and_grads(model, guide, *args, **kwargs)
    except (ValueError, RuntimeError) as err:
        if _loss_is_non_finite(elbo, model, guide, args, kwargs):  # e.g. Pyro's validation caught a NaN
            trainer.fail(f"loss ({str(err).splitlines()[0][:200]})", err)
        sequential = None if trainer.step_count else _sequential(elbo, may_fall_back)
        if sequential is None:
            raise
        elbo = sequential
        with poutine.trace(param_only=True) as capture:
            value = elbo.loss_and_grads(model, guide, *args, **kwargs)  # fails alike: its error is the real one
        warnings.warn(f"vectorised particles failed ({err}); using sequential particles", stacklevel=3)
    return value, elbo, [site["value"].unconstrained() for site in capture.trace.nodes.values()]
