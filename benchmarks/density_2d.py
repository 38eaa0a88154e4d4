"""2-D density estimation: test NLL and ms/step against the peers.

Same coupling NSF everywhere (5 transforms, hidden 64x2 MLP, 8 bins, bound 5,
splines mapping data to base; Pyro's built-in can only map base to data),
Adam 1e-3, batch 512, 2000 steps, 20k train / 5k test points per data set.

    python benchmarks/density_2d.py                 # full run, seed 0
    python benchmarks/density_2d.py --seeds 0 1 2   # mean over seeds (NLL noise is ~0.03 nats)
    python benchmarks/density_2d.py --steps 50      # smoke run
    python benchmarks/density_2d.py --seeds 1 2 --results density_2d_seeds12
    python benchmarks/density_2d.py --combine density_2d density_2d_seeds12 --results density_2d_3seeds
    python benchmarks/density_2d.py --combine a b --libraries zuko nflows --results c   # some libraries only
    python benchmarks/density_2d.py --timing --results density_2d_timing   # ms/step only, alternated
"""

from __future__ import annotations

import argparse
import json
import statistics

import torch
from common import RESULTS, alternated_ms_per_step, nll, save, table, train
from peers import LIBRARIES, build

from pyroflows.datasets import TOY_2D, toy_2d


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--datasets", nargs="+", default=list(TOY_2D))
    parser.add_argument("--libraries", nargs="+", default=list(LIBRARIES))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument(
        "--results",
        default=None,
        help="JSON name under results/ (default: density_2d, or density_2d_timing with --timing)",
    )
    parser.add_argument("--combine", nargs="+", default=[], help="results files to pool by seed instead of running")
    parser.add_argument("--timing", action="store_true", help="only ms/step, the libraries alternated")
    args = parser.parse_args()
    args.results = args.results or ("density_2d_timing" if args.timing else "density_2d")
    if args.timing:
        rows = [row for name in args.datasets for row in timing(name, args.libraries)]
    else:
        rows = combine(args.combine, args.libraries, args.datasets) if args.combine else run(args)
    for name in {r["dataset"] for r in rows}:
        ours = next((r for r in rows if r["dataset"] == name and r["library"] == "pyroflows"), None)
        peers = [r for r in rows if r["dataset"] == name and not r["library"].startswith("pyroflows")]
        if ours is not None and peers:
            if "test_nll" in ours:
                ours["nll_minus_best_peer"] = ours["test_nll"] - min(r["test_nll"] for r in peers)
            ours["time_vs_fastest_peer"] = ours["ms_per_step"] / min(r["ms_per_step"] for r in peers)
    columns = ["dataset", "library", "test_nll", "ms_per_step", "nll_minus_best_peer", "time_vs_fastest_peer"]
    print(table(rows, [c for c in columns if any(c in r for r in rows)]))
    print("wrote", save(args.results, {"args": vars(args), "rows": rows}))


def timing(name: str, libraries: list[str]) -> list[dict]:
    """ms per training step (fused Adam, batch 512) of each library, alternated in rounds."""
    torch.manual_seed(0)
    data = toy_2d(name, 20_000, seed=0)
    gen = torch.Generator().manual_seed(0)

    def step_fn(library):
        model = build(library, "nsf", 2)
        opt = torch.optim.Adam(model.module.parameters(), lr=1e-3, fused=True)

        def step():
            loss = -model.log_prob(data[torch.randint(len(data), (512,), generator=gen)]).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()

        return step

    medians = alternated_ms_per_step({library: step_fn(library) for library in libraries})
    return [{"dataset": name, "library": library, "ms_per_step": ms} for library, ms in medians.items()]


def combine(names: list[str], libraries: list[str], datasets: list[str]) -> list[dict]:
    """Pool the per-seed NLLs and timings of several runs (one row per data set and
    library), keeping the rows of ``libraries`` on ``datasets``."""
    pooled: dict[tuple, dict] = {}
    for name in names:
        for row in json.loads((RESULTS / f"{name}.json").read_text())["rows"]:
            if row["library"] not in libraries or row["dataset"] not in datasets:
                continue
            nlls = row.get("test_nll_per_seed", [row["test_nll"]])
            entry = pooled.setdefault((row["dataset"], row["library"]), {"nlls": [], "times": []})
            entry["nlls"] += nlls
            entry["times"] += [row["ms_per_step"]] * len(nlls)
    return [
        {
            "dataset": dataset,
            "library": library,
            "test_nll": statistics.mean(e["nlls"]),
            "ms_per_step": statistics.mean(e["times"]),
            "test_nll_per_seed": e["nlls"],
        }
        for (dataset, library), e in pooled.items()
    ]


def run(args) -> list[dict]:
    rows = []
    for name in args.datasets:
        for library in args.libraries:
            nlls, times = [], []
            for seed in args.seeds:
                train_x, test_x = toy_2d(name, 20_000, seed=seed), toy_2d(name, 5_000, seed=seed + 1)
                torch.manual_seed(seed)
                model = build(library, "nsf", 2)
                times.append(train(model, train_x, args.steps, 512, 1e-3, seed))
                nlls.append(nll(model, test_x))
            rows.append(
                {
                    "dataset": name,
                    "library": library,
                    "test_nll": statistics.mean(nlls),
                    "ms_per_step": statistics.mean(times),
                    "test_nll_per_seed": nlls,
                }
            )
            print(rows[-1], flush=True)
    return rows


if __name__ == "__main__":
    main()
