"""Data-parallel SVI: 2 processes of one thread against 1, same global batch.

A Bayesian linear regression on 10^6 rows and 10 features, fitted by
``pyroflows.infer.fit`` with AutoFlow (and AutoNormal) on minibatches of
``--batch`` rows a step: one process subsamples the whole data; under
``torchrun`` each of 2 processes holds half the rows and subsamples half the
batch from its half (``data_plate="rows"``). A third case, "AutoFlow
plate-aware", fits random intercepts of 2,000 groups of 100 rows (200,000
rows, the regression's batch; a structured AutoFlow over the 2,000 group
effects) with the groups plate numbered across the processes: each process
holds and runs its 1,000 groups every step (one process: all 2,000). Reports steps per second (after
``--warmup`` steps) and their ratio, and the loss trajectories (means over
windows of 50 steps) with the largest gap between them in units of its
standard error (as if steps were independent), beside the same gap between
two one-process runs with different seeds: the Monte Carlo yardstick.

    python benchmarks/distributed_svi.py            # launches the 2-process run itself
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from common import FIXED_SCHEDULE, save, table
from pyro.infer.autoguide import AutoNormal

from pyroflows.distributed import setup_distributed, shard
from pyroflows.infer import AutoFlow, fit

ROWS, FEATURES, WINDOW = 1_000_000, 10, 50
GROUPS, PER_GROUP = 2_000, 100  # the plate-aware case: 200,000 rows in groups, all run each step


def regression(x, y, batch):
    beta = pyro.sample("beta", dist.Normal(0.0, 1.0).expand([FEATURES]).to_event(1))
    sigma = pyro.sample("sigma", dist.HalfNormal(1.0))
    with pyro.plate("rows", len(x), subsample_size=batch) as idx:
        pyro.sample("y", dist.Normal(x[idx] @ beta, sigma), obs=y[idx])


def random_intercepts(x, y, members):
    """A group intercept per group; the groups plate numbered across the processes."""
    mu, sd = pyro.sample("mu", dist.Normal(0.0, 5.0)), pyro.sample("sd", dist.HalfNormal(2.0))
    slope, sigma = pyro.sample("slope", dist.Normal(0.0, 5.0)), pyro.sample("sigma", dist.HalfNormal(1.0))
    with pyro.plate("groups", GROUPS, subsample=members):
        a = pyro.sample("a", dist.Normal(mu, sd))
        loc = a.unsqueeze(-1) + slope.unsqueeze(-1) * x
        pyro.sample("y", dist.Normal(loc, sigma.unsqueeze(-1)).to_event(1), obs=y)


def groups_plate(x, y, members):
    return pyro.plate("groups", GROUPS, subsample=members)


CASES = {
    "AutoFlow": (regression, lambda m: AutoFlow(m, warm_start=None)),
    "AutoNormal": (regression, AutoNormal),
    "AutoFlow plate-aware": (random_intercepts, lambda m: AutoFlow(m, create_plates=groups_plate)),
}


def simulate() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(ROWS, FEATURES, generator=g)
    beta = torch.linspace(-1, 1, FEATURES)
    return x, x @ beta + 0.5 * torch.randn(ROWS, generator=g)


def case_args(name: str, batch: int, world: int) -> tuple[tuple, str]:
    """The model's arguments for this process (its shard under torchrun) and the sharded plate."""
    if CASES[name][0] is regression:
        x, y = simulate()
        return ((*shard(x, y), batch // world) if world > 1 else (x, y, batch)), "rows"
    g = torch.Generator().manual_seed(0)
    x = torch.randn(GROUPS, PER_GROUP, generator=g)
    y = (1.0 + 0.5 * torch.randn(GROUPS, 1, generator=g)) + 0.7 * x + 0.5 * torch.randn(GROUPS, PER_GROUP, generator=g)
    members = shard(torch.arange(GROUPS)) if world > 1 else torch.arange(GROUPS)
    return (x[members], y[members], members), "groups"


def timed(name: str, batch: int, steps: int, warmup: int, world: int = 1, seed: int = 0) -> dict:
    """``warmup`` steps, then ``steps`` timed steps (the same run continued)."""
    pyro.clear_param_store()
    model, make_guide = CASES[name]
    args, plate = case_args(name, batch, world)
    guide = make_guide(model)
    kw = {"seed": seed, "progress": False, "data_plate": plate if world > 1 else None, **FIXED_SCHEDULE}
    fit(model, guide, *args, num_steps=warmup, **kw)
    start = time.perf_counter()
    losses = fit(model, guide, *args, num_steps=steps, **kw)
    return {"steps_per_s": steps / (time.perf_counter() - start), "losses": losses.tolist()}


def worker(args) -> None:
    torch.set_num_threads(1)
    rank, world = setup_distributed()
    out = {g: timed(g, args.batch, args.steps, args.warmup, world) for g in args.guides}
    if rank == 0:
        Path(args.worker).write_text(json.dumps({"world": world, **out}))


def trajectory_gap(a: list[float], b: list[float]) -> float:
    """The largest gap between window means of two loss curves, in standard errors."""
    a, b = np.asarray(a), np.asarray(b)
    n = len(a) // WINDOW
    a, b = a[: n * WINDOW].reshape(n, WINDOW), b[: n * WINDOW].reshape(n, WINDOW)
    se = np.sqrt((a.var(1, ddof=1) + b.var(1, ddof=1)) / WINDOW)
    return float(np.max(np.abs(a.mean(1) - b.mean(1)) / se))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--guides", nargs="*", default=list(CASES))
    parser.add_argument("--batch", type=int, default=200_000, help="global minibatch of rows per step")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    if args.worker:
        return worker(args)
    torch.set_num_threads(1)
    single = {g: timed(g, args.batch, args.steps, args.warmup) for g in args.guides}
    reseeded = {g: timed(g, args.batch, args.steps, args.warmup, seed=1) for g in args.guides}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "parallel.json"
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", __file__]
        forwarded = ["--guides", *args.guides, "--batch", str(args.batch), "--steps", str(args.steps)]
        subprocess.run([*cmd, *forwarded, "--warmup", str(args.warmup), "--worker", str(out)], check=True)
        parallel = json.loads(out.read_text())
    rows = []
    for g in args.guides:
        one, two = single[g], parallel[g]
        rows.append(
            {
                "guide": g,
                "rows": ROWS if CASES[g][0] is regression else GROUPS * PER_GROUP,
                "batch": args.batch if CASES[g][0] is regression else GROUPS * PER_GROUP,
                "1 proc steps/s": one["steps_per_s"],
                "2 procs steps/s": two["steps_per_s"],
                "speed-up": two["steps_per_s"] / one["steps_per_s"],
                "final loss 1": float(np.mean(one["losses"][-WINDOW:])),
                "final loss 2": float(np.mean(two["losses"][-WINDOW:])),
                "max gap (se)": trajectory_gap(one["losses"], two["losses"]),
                "seed 0 vs 1 (se)": trajectory_gap(one["losses"], reseeded[g]["losses"]),
            }
        )
    print(table(rows, list(rows[0])))
    save(
        "distributed_svi",
        {"args": vars(args), "rows": rows, "single": single, "parallel": parallel, "seed_1": reseeded},
    )


if __name__ == "__main__":
    main()
