"""When ``fit`` may stop: two annealed cycles agree and PSIS k-hat is small.

Under a `StopRule`, `fit` trains in cycles. Each cycle is a whole short run
of the fixed schedule: the learning rate warms up, decays on a cosine to its
final value, and the parameters are averaged over the cycle's last
``average`` fraction (Polyak-Ruppert), which takes SGD's noise out of them.
The first two cycles last ``first`` steps, each later one twice the one
before, restarting from the averaged parameters with the optimiser's
state: at ``restart`` times the last peak rate once the guide is near its
optimum (drift < 1 sd; at the first check, with no drift yet, k-hat < 0.7),
at the same peak while it still travels (a mean-field guide started far
away would starve otherwise).
At the end of each cycle the averaged guide is checked on ``num_draws``
draws, always from the same random numbers:

- PSIS k-hat (Yao et al. 2018, "Yes, but did it work?"; ArviZ's
  ``psislw``, as `pyroflows.diagnostics.psis` reports it), and
- the drift: the largest change of any latent's guide mean since the last
  cycle's check, in guide standard deviations. k-hat alone misses means
  that are still a tenth of a standard deviation off; two annealed runs
  of different lengths that agree have converged.

With k-hat below ``khat`` and the drift below ``drift`` the run stops;
else the next cycle starts. The cycles are cut to fit the step cap, so a
run that reaches it ends annealed and averaged too.

Cost: per cycle one vectorised run of model and guide on ``num_draws``
draws (in chunks of at most 250 draws and about 2**24 log-density
entries), about the forward cost of ``num_draws / num_particles`` steps;
at least two cycles. A model that does not vectorise is checked one draw
at a time (``num_draws`` runs: slow). The checks run on a forked
random stream: they do not change the training trajectory.

Failure modes: k-hat is an estimate (about +-0.1 at 2000 draws), so a guide
near the threshold can stop or go on by chance, and a posterior whose k-hat
stays near 0.5-0.7 (a guide that is good but not excellent) runs to the
cap. k-hat cannot see a mode the guide never visited. With subsampled
plates, or data-parallel shards, log p is a random estimate and k-hat is
meaningless: the rule then uses the drift only, and says so in ``reason``;
so it does for a point-mass guide (AutoDelta), whose drift is relative to
each value's size.
"""

from __future__ import annotations

import functools
import math
import numbers
from dataclasses import dataclass, field

import torch
from pyro import poutine
from pyro.infer.importance import vectorized_importance_weights
from pyro.poutine.util import site_is_subsample

from pyroflows.infer.psis import psis
from pyroflows.training import IterateAverage, check_positive, warmup_cosine

__all__ = ["StopRule"]

_CHUNK = 250
_SEED = 20181018  # the checks' fixed random numbers
_NEAR_DRIFT, _NEAR_KHAT = 1.0, 0.7  # a guide this settled restarts at a lower peak


@dataclass
class StopRule:
    """Stop `fit` once an annealed cycle's guide has PSIS k-hat < ``khat``
    and its means moved by less than ``drift`` sds since the last cycle's.

    After the run, ``reason`` says why it stopped and ``checks`` holds
    ``(step, k-hat, drift)`` for every check (k-hat NaN with subsampled
    plates, drift infinite at the first).

    Examples:
        >>> rule = StopRule(first=300)
        >>> rule.plan(0, cap=2000), rule.plan(300, cap=2000), rule.plan(600, cap=2000)
        (300, 300, 600)
    """

    khat: float = 0.5
    drift: float = 0.1
    first: int = 300
    restart: float = 0.5
    num_draws: int = 2000
    reason: str = field(default="", init=False)
    checks: list[tuple[int, float, float]] = field(default_factory=list, init=False)
    converged: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        check_positive("khat", self.khat)
        check_positive("drift", self.drift)
        if not (isinstance(self.restart, numbers.Real) and 0 < self.restart <= 1):
            raise ValueError(f"restart must be a fraction in (0, 1], got {self.restart!r}")
        check_positive("first", self.first, numbers.Integral)
        check_positive("num_draws", self.num_draws, numbers.Integral)
        self.reset()

    def reset(self) -> None:
        """Forget a previous run (`fit` calls it first)."""
        self.reason, self.checks, self.converged = "", [], False
        self._cycle, self._average, self._moments, self._sharded, self._peak = None, None, None, False, 1.0
        self._chunk, self._near = None, False

    def state_dict(self) -> dict:
        """What a resumed run needs to go on exactly (`fit` keeps it in its checkpoint)."""
        average = None if self._average is None else {"start": self._average.start, **self._average.state_dict()}
        kept = {"cycle": self._cycle, "peak": self._peak, "near": self._near, "moments": self._moments}
        kept["average"] = average
        return {**kept, "checks": list(self.checks), "converged": self.converged, "reason": self.reason}

    def load_state_dict(self, state: dict) -> None:
        self._cycle, self._peak, self._moments = state["cycle"], state["peak"], state["moments"]
        self._near = state["near"]
        self.checks, self.converged, self.reason = list(state["checks"]), state["converged"], state["reason"]
        self._average = None
        if state["average"] is not None:
            self._average = IterateAverage(state["average"]["start"])
            self._average.load_state_dict(state["average"])

    def sharded(self) -> StopRule:
        """This rule for a data-parallel run: log p is a shard's estimate, so no k-hat."""
        self._sharded = True
        return self

    @property
    def mid_cycle(self) -> bool:
        """Whether a cycle has begun and not been checked (a time cap can cut one)."""
        return self._average is not None

    def plan(self, step: int, cap: int) -> int:
        """The length of a cycle starting at ``step``: ``first`` for the first
        two, then the steps so far; cut to the cap, and stretched to it
        rather than leave a stub shorter than ``first // 2``."""
        length = self.first if step < 2 * self.first else step
        if cap - (step + length) < self.first // 2:
            length = cap - step
        return max(1, length)

    def lr_factor(self, step: int, warmup: float, final: float, cap: int) -> float:
        """The learning-rate factor at ``step`` within its cycle (a warm-up
        over ``warmup`` of it, then a cosine decay to ``final``)."""
        if self._cycle is None or step >= sum(self._cycle):
            if self._cycle is None:
                self._peak = 1.0
            elif self._near:  # lower the peak only once the guide is near its optimum
                self._peak = max(final, self._peak * self.restart)
            self._cycle = (step, self.plan(step, cap))
        start, length = self._cycle
        return self._peak * warmup_cosine(step - start, length, warmup, final / self._peak)

    def after_step(self, step: int, params: list[torch.Tensor], average: float) -> bool:
        """Fold the step's parameters into the cycle's average (its last
        ``average`` fraction); True at the cycle's end."""
        start, length = self._cycle
        fresh = self._average is None or self._average.start < start
        if fresh or (self._average.values is not None and len(self._average.values) != len(params)):  # new params
            self._average = IterateAverage(start + length - max(1, int(average * length)))
            self._average.begin(params)
        self._average.update(step - 1, params)
        return step == start + length

    def end_cycle(self, step: int, params, model, guide, args, kwargs, nesting: int) -> bool:
        """Put the cycle's average into ``params`` and check it; True when converged."""
        average = self._average.average() if self._average is not None else None
        if average is not None:  # None when a time cap cut the cycle before its average began
            with torch.no_grad():
                torch._foreach_copy_([p.data for p in params], average)
        khat, moments = self.check(model, guide, args, kwargs, nesting)
        drift = math.inf if self._moments is None else _drift(self._moments, moments)
        self.checks.append((step, khat, drift))
        self._moments, self._average = moments, None
        self.converged = drift < self.drift and (math.isnan(khat) or khat < self.khat)
        self._near = drift < _NEAR_DRIFT if math.isfinite(drift) else khat < _NEAR_KHAT  # k-hat: first check only
        if self.converged:
            undefined = "k-hat not defined (log p estimated, or q a point mass)"
            shown = undefined if math.isnan(khat) else f"k-hat {khat:.2f} < {self.khat}"
            self.reason = f"converged at step {step}: {shown}, drift {drift:.3f} sd since the last cycle"
        return self.converged

    def check(self, model, guide, args, kwargs, nesting: int) -> tuple[float, dict]:
        """PSIS k-hat of ``guide`` (NaN where log p is estimated) and each
        latent's guide (mean, sd), from ``num_draws`` draws on fixed random
        numbers (so two checks differ only by what training changed)."""
        log_weights, values, subsampled = [], {}, self._sharded
        with torch.random.fork_rng(devices=[]), torch.no_grad(), poutine.block():
            draw = functools.partial(vectorized_importance_weights, model, guide, *args, max_plate_nesting=nesting)
            if self._chunk is None:  # the model's size does not change between checks
                self._chunk = _chunk(draw, kwargs)
            if self._chunk == 1:  # the model does not vectorise: one draw at a time
                draw = functools.partial(_one_draw, model, guide, *args)
            torch.manual_seed(_SEED)
            for start in range(0, self.num_draws, self._chunk):
                num = min(self._chunk, self.num_draws - start)
                lw, trace, _ = draw(num_samples=num, **kwargs)
                log_weights.append(lw.double().reshape(num))
                subsampled = subsampled or _subsampled(trace)
                for name, value in _latents(trace, num):
                    values.setdefault(name, []).append(value)
        moments = {name: _mean_and_sd(torch.cat(v)) for name, v in values.items()}
        point_mass = all(bool((sd == 0).all()) for _, sd in moments.values())  # AutoDelta: q has no density
        return (math.nan if subsampled or point_mass else _khat(torch.cat(log_weights))), moments

    def capped(self, step: int) -> str:
        """The reason for a run that ended at a cap without meeting the rule."""
        if self.checks:
            _, khat, drift = self.checks[-1]
            last = f"last check: k-hat {khat:.2f}, drift {drift:.3f} sd"
        else:
            last = "no check"
        self.reason = f"stopped at step {step} by the step or time cap without converging ({last})"
        return self.reason


def _chunk(draw, kwargs) -> int:
    """Draws per vectorised pass: at most 250, and about 2**24 log-density
    entries (a large model's pass must not outgrow memory); 1 where the
    model does not vectorise."""
    try:
        trace = draw(num_samples=2, **kwargs)[1]
    except (ValueError, RuntimeError, NotImplementedError):
        return 1
    per_draw = sum(site["log_prob"].numel() for site in trace.nodes.values() if "log_prob" in site) / 2
    return int(max(1, min(_CHUNK, 2**24 // max(per_draw, 1))))


def _one_draw(model, guide, *args, num_samples: int, **kwargs):
    """One importance draw without vectorising: (log weight, model trace, guide trace)."""
    guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
    model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*args, **kwargs)
    return model_trace.log_prob_sum() - guide_trace.log_prob_sum(), model_trace, guide_trace


def _latents(trace, num: int):
    """(name, (num, -1) float64 values) for the latent sites of a vectorised model trace."""
    for name, site in trace.nodes.items():
        if site["type"] == "sample" and not site["is_observed"] and not site_is_subsample(site):
            value = site["value"]
            if value.is_floating_point() and value.numel() % num == 0:
                yield name, value.detach().reshape(num, -1).double()


def _mean_and_sd(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return values.mean(0), values.std(0)


def _drift(before: dict, after: dict) -> float:
    """The largest change of a guide mean between two checks, in the earlier
    check's sds (a point mass's: relative to its size, at least 1)."""
    worst = 0.0
    for name, (mean, _) in after.items():
        if name in before:
            old_mean, old_sd = before[name]
            scale = torch.where(old_sd > 0, old_sd, old_mean.abs().clamp_min(1.0))
            worst = max(worst, float(((mean - old_mean).abs() / scale).max()))
    return worst


def _subsampled(trace) -> bool:
    """Whether any site sits in a subsampled plate (Pyro prunes the subsample sites themselves)."""
    return any(
        frame.full_size is not None and frame.size < frame.full_size
        for site in trace.nodes.values()
        for frame in site.get("cond_indep_stack", ())
    )


def _khat(log_weights: torch.Tensor) -> float:
    return psis(log_weights).khat if torch.isfinite(log_weights).all() else math.inf
