"""Data-parallel SVI: 2 processes of one thread against 1, same global batch.

A Bayesian linear regression on 10^6 rows and 10 features, fitted by
``pyroflows.infer.fit`` with AutoFlow (and AutoNormal) on minibatches of
``--batch`` rows a step: one process subsamples the whole data; under
``torchrun`` each of 2 processes holds half the rows and subsamples half the
batch from its half (``data_plate="rows"``). Reports steps per second (after
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
GUIDES = {"AutoFlow": lambda m: AutoFlow(m, warm_start=None), "AutoNormal": lambda m: AutoNormal(m)}


def regression(x, y, batch):
    beta = pyro.sample("beta", dist.Normal(0.0, 1.0).expand([FEATURES]).to_event(1))
    sigma = pyro.sample("sigma", dist.HalfNormal(1.0))
    with pyro.plate("rows", len(x), subsample_size=batch) as idx:
        pyro.sample("y", dist.Normal(x[idx] @ beta, sigma), obs=y[idx])


def simulate() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(ROWS, FEATURES, generator=g)
    beta = torch.linspace(-1, 1, FEATURES)
    return x, x @ beta + 0.5 * torch.randn(ROWS, generator=g)


def timed(guide_name: str, x, y, batch: int, steps: int, warmup: int, data_plate=None, seed: int = 0) -> dict:
    """``warmup`` steps, then ``steps`` timed steps (the same run continued)."""
    pyro.clear_param_store()
    guide = GUIDES[guide_name](regression)
    kw = {"seed": seed, "progress": False, "data_plate": data_plate, **FIXED_SCHEDULE}
    fit(regression, guide, x, y, batch, num_steps=warmup, **kw)
    start = time.perf_counter()
    losses = fit(regression, guide, x, y, batch, num_steps=steps, **kw)
    return {"steps_per_s": steps / (time.perf_counter() - start), "losses": losses.tolist()}


def worker(args) -> None:
    torch.set_num_threads(1)
    rank, world = setup_distributed()
    x, y = shard(*simulate())
    out = {g: timed(g, x, y, args.batch // world, args.steps, args.warmup, "rows") for g in args.guides}
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
    parser.add_argument("--guides", nargs="*", default=list(GUIDES))
    parser.add_argument("--batch", type=int, default=200_000, help="global minibatch of rows per step")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    if args.worker:
        return worker(args)
    torch.set_num_threads(1)
    x, y = simulate()
    single = {g: timed(g, x, y, args.batch, args.steps, args.warmup) for g in args.guides}
    reseeded = {g: timed(g, x, y, args.batch, args.steps, args.warmup, seed=1) for g in args.guides}
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
                "rows": ROWS,
                "batch": args.batch,
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
