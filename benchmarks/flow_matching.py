"""Flow matching on 2-D tasks: pyroflows vs torchcfm, at the same network and step budget.

Tasks: 8gaussians -> moons, N(0, I) -> checkerboard, N(0, I) -> 2spirals
(10k train_matcher, 2k test points). Velocity MLP 64x3 on ``[x, t]`` (pyroflows: ``TimeMLP``,
SiLU, ``train``'s default weight EMA 0.999; torchcfm: its ``MLP``, SELU), Adam 1e-3, batch 256,
sigma = 0, independent and exact-OT couplings (torchcfm's
``ConditionalFlowMatcher`` and ``ExactOptimalTransportConditionalFlowMatcher``).
Every model is sampled by the same integrator: exact W2 (POT) between 2k samples
and the 2k test points after 1, 2, 10 and 100 Euler steps and with dopri5 (NFE).
For pyroflows models, also: one reflow round (10k pairs from 100 Euler steps,
``--reflow-steps`` more training steps) and its 1-step W2; straightness; test
NLL from the ODE likelihood (dopri5, exact divergence).

    pip install pot && pip install --no-deps torchcfm
    python benchmarks/flow_matching.py                          # full run
    python benchmarks/flow_matching.py --steps 200 --tasks moons  # smoke run
    python benchmarks/flow_matching.py --timing --results flow_matching_timing  # ms/step only, alternated
    python benchmarks/flow_matching.py --combine a b --results both  # one table from runs made apart
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time

import numpy as np
import pyro.distributions as dist
import torch
from common import RESULTS, save, table
from torch import nn

from pyroflows.datasets import toy_2d
from pyroflows.matching import ExactOT, FlowMatcher, Independent, reflow, straightness, train_matcher, wasserstein2
from pyroflows.nn.velocity import TimeMLP

TASKS = {"moons": "8gaussians", "checkerboard": "normal", "2spirals": "normal"}  # target: source
EULER_STEPS = (1, 2, 10, 100)


def eight_gaussians() -> dist.Distribution:
    """The 8gaussians toy density in closed form (``toy_2d("8gaussians")``)."""
    angles = torch.arange(8) * (math.pi / 4)
    centers = 4.0 * torch.stack([angles.cos(), angles.sin()], 1) / 1.414
    components = dist.Normal(centers, torch.full_like(centers, 0.5 / 1.414)).to_event(1)
    return dist.MixtureSameFamily(dist.Categorical(torch.ones(8)), components)


def source_for(name: str) -> dist.Distribution | None:
    return eight_gaussians() if name == "8gaussians" else None


class TorchCFMVelocity(nn.Module):
    """torchcfm's MLP as ``v(x, t)``: it reads ``[x, t]``."""

    def __init__(self) -> None:
        super().__init__()
        from torchcfm.models import MLP

        self.net = MLP(2, w=64, time_varying=True)

    def forward(self, x, t, context=None):
        t = torch.as_tensor(t).to(x).expand(x.shape[:-1])[..., None]
        return self.net(torch.cat([x, t], -1))


WARMUP = 10  # steps left out of the timing (first-call allocations)


def train_torchcfm(velocity, matcher_cls, source, data, steps, seed) -> float:
    """torchcfm's own training step (its README loop); returns ms/step."""
    matcher = matcher_cls(sigma=0.0)
    opt = torch.optim.Adam(velocity.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(seed)
    for step in range(steps):
        if step == WARMUP:
            start = time.perf_counter()
        x1 = data[torch.randint(len(data), (256,), generator=gen)]
        x0 = source.sample((256,)) if source is not None else torch.randn_like(x1)
        t, xt, ut = matcher.sample_location_and_conditional_flow(x0, x1)
        loss = (velocity.net(torch.cat([xt, t[:, None]], -1)) - ut).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return 1000 * (time.perf_counter() - start) / (steps - WARMUP)


def evaluate(fm: FlowMatcher, test: torch.Tensor, seed: int) -> dict:
    torch.manual_seed(seed + 7)
    x_0 = fm.sample_source((len(test),))
    row = {f"w2_euler_{k}": wasserstein2(fm.sample(x_0, steps=k), test) for k in EULER_STEPS}
    row["w2_dopri5"] = wasserstein2(fm.sample(x_0, method="dopri5"), test)
    row["nfe_dopri5"] = fm.last_nfe
    row["straightness"] = straightness(fm, x_0)
    return row


def run(library: str, coupling: str, target: str, seed: int, args) -> dict:
    torch.manual_seed(seed)
    np.random.seed(seed)  # torchcfm's OT sampler draws from numpy's global RNG
    data, test = toy_2d(target, 10_000, seed=seed), toy_2d(target, 2_000, seed=seed + 1)
    source = source_for(TASKS[target])
    if library == "pyroflows":
        fm = FlowMatcher(
            TimeMLP(2, (64, 64, 64)), (2,), coupling=ExactOT() if coupling == "ot" else Independent(), source=source
        )
        opt = torch.optim.Adam(fm.parameters(), lr=1e-3, fused=True)  # what train_matcher() makes by default
        train_matcher(fm, data, WARMUP, batch_size=256, optimizer=opt, seed=seed, progress=False, ema=None)
        start = time.perf_counter()
        train_matcher(fm, data, args.steps - WARMUP, batch_size=256, optimizer=opt, seed=seed + 1, progress=False)
        ms = 1000 * (time.perf_counter() - start) / (args.steps - WARMUP)
    else:
        from torchcfm.conditional_flow_matching import (
            ConditionalFlowMatcher,
            ExactOptimalTransportConditionalFlowMatcher,
        )

        velocity = TorchCFMVelocity()
        cls = ExactOptimalTransportConditionalFlowMatcher if coupling == "ot" else ConditionalFlowMatcher
        ms = train_torchcfm(velocity, cls, source, data, args.steps, seed)
        fm = FlowMatcher(velocity, (2,), source=source)  # same sampler for every model
    task = f"{TASKS[target]}->{target}"
    row = {"task": task, "library": library, "coupling": coupling, "seed": seed, "ms_per_step": ms}
    row.update(evaluate(fm, test, seed))
    if library == "pyroflows":
        with torch.no_grad():
            row["test_nll"] = -fm.log_prob(test, rtol=1e-5, atol=1e-5).mean().item()
        reflow(
            fm,
            rounds=1,
            num_pairs=10_000,
            steps=args.reflow_steps,
            sample_steps=100,
            lr=1e-3,
            seed=seed,
            progress=False,
        )
        torch.manual_seed(seed + 7)
        x_0 = fm.sample_source((len(test),))
        row["reflow_w2_euler_1"] = wasserstein2(fm.sample(x_0, steps=1), test)
        row["reflow_straightness"] = straightness(fm, x_0)
        row["reflow_1step_over_orig_100step"] = row["reflow_w2_euler_1"] / row["w2_euler_100"]
    return row


def timing(target: str, coupling: str, rounds: int, steps: int) -> dict:
    """ms/step of both training loops, alternated in rounds (same machine load), medians."""
    from torchcfm.conditional_flow_matching import (
        ConditionalFlowMatcher,
        ExactOptimalTransportConditionalFlowMatcher,
    )

    torch.manual_seed(0)
    np.random.seed(0)
    data, source = toy_2d(target, 10_000), source_for(TASKS[target])
    fm = FlowMatcher(
        TimeMLP(2, (64, 64, 64)), (2,), coupling=ExactOT() if coupling == "ot" else Independent(), source=source
    )
    opt = torch.optim.Adam(fm.parameters(), lr=1e-3, fused=True)  # what train_matcher() makes by default
    velocity = TorchCFMVelocity()
    cls = ExactOptimalTransportConditionalFlowMatcher if coupling == "ot" else ConditionalFlowMatcher
    ours, theirs = [], []
    for r in range(rounds + 1):  # round 0 warms up
        start = time.perf_counter()
        train_matcher(fm, data, steps, batch_size=256, optimizer=opt, seed=r, progress=False)
        mid = time.perf_counter()
        train_torchcfm(velocity, cls, source, data, steps + WARMUP, r)
        end = time.perf_counter()
        if r:
            ours.append(1000 * (mid - start) / steps)
            theirs.append(1000 * (end - mid) / (steps + WARMUP))
    a, b = statistics.median(ours), statistics.median(theirs)
    return {
        "task": f"{TASKS[target]}->{target}",
        "coupling": coupling,
        "pyroflows_ms": a,
        "torchcfm_ms": b,
        "time_vs_torchcfm": a / b,
    }


def summarise(rows: list[dict]) -> list[dict]:
    """Mean over seeds per (task, library, coupling), with pyroflows against torchcfm."""
    keys = list(dict.fromkeys((r["task"], r["library"], r["coupling"]) for r in rows))
    out = []
    for key in keys:
        group = [r for r in rows if (r["task"], r["library"], r["coupling"]) == key]
        mean = {k: statistics.mean(r[k] for r in group) for k in group[0] if isinstance(group[0][k], float | int)}
        w2 = [r["w2_euler_100"] for r in group]
        sem = statistics.stdev(w2) / math.sqrt(len(w2)) if len(w2) > 1 else float("nan")
        out.append({"task": key[0], "library": key[1], "coupling": key[2], "seeds": len(group), **mean})
        out[-1]["w2_euler_100_sem"] = sem
    for row in out:
        if row["library"] == "pyroflows":
            peer = next(
                r
                for r in out
                if r["library"] == "torchcfm" and (r["task"], r["coupling"]) == (row["task"], row["coupling"])
            )
            row["w2_100_minus_torchcfm"] = row["w2_euler_100"] - peer["w2_euler_100"]
            row["time_vs_torchcfm"] = row["ms_per_step"] / peer["ms_per_step"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    parser.add_argument("--steps", type=int, default=5000)
    parser.add_argument("--reflow-steps", type=int, default=5000)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--results",
        default=None,
        help="JSON name under results/ (default: flow_matching, or flow_matching_timing with --timing)",
    )
    parser.add_argument("--timing", action="store_true", help="only time both training loops, alternated")
    parser.add_argument("--combine", nargs="+", default=[], help="results files to merge instead of running")
    args = parser.parse_args()
    args.results = args.results or ("flow_matching_timing" if args.timing else "flow_matching")
    torch.set_num_threads(args.threads)
    if args.timing:
        rows = [timing(target, coupling, 5, 300) for target in args.tasks for coupling in ("independent", "ot")]
        print(table(rows, ["task", "coupling", "pyroflows_ms", "torchcfm_ms", "time_vs_torchcfm"]))
        print("wrote", save(args.results, {"args": vars(args), "rows": rows}))
        return
    rows = [row for name in args.combine for row in json.loads((RESULTS / f"{name}.json").read_text())["rows"]]
    for target in args.tasks if not args.combine else ():
        for coupling in ("independent", "ot"):
            for seed in args.seeds:
                for library in ("pyroflows", "torchcfm"):  # alternated, so both see the same machine load
                    rows.append(run(library, coupling, target, seed, args))
                    print(rows[-1], flush=True)
    summary = summarise(rows)
    w2 = [f"w2_euler_{k}" for k in EULER_STEPS]
    print(
        table(summary, ["task", "library", "coupling", "ms_per_step", *w2, "w2_dopri5", "nfe_dopri5", "straightness"])
    )
    ours = [r for r in summary if r["library"] == "pyroflows"]
    columns = ["task", "coupling", "seeds", "w2_100_minus_torchcfm", "w2_euler_100_sem", "time_vs_torchcfm"]
    columns += ["test_nll", "reflow_w2_euler_1"]
    print(table(ours, [*columns, "reflow_1step_over_orig_100step", "reflow_straightness"]))
    print("wrote", save(args.results, {"args": vars(args), "summary": summary, "rows": rows}))


if __name__ == "__main__":
    main()
