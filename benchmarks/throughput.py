"""Throughput: log_prob + backward and sampling, samples per second.

Same coupling NSF as ``density_2d`` (5 transforms, hidden 64x2, 8 bins) at
batch 4096 for D = 2, 16 and 64; the median over repeats, interleaving the
libraries so machine noise hits all alike.

    python benchmarks/throughput.py
    python benchmarks/throughput.py --dims 16 --repeats 3   # quick
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from common import save, table
from peers import LIBRARIES, build


def _rate(fn, batch: int, iters: int) -> float:
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    return batch * iters / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dims", type=int, nargs="+", default=[2, 16, 64])
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--libraries", nargs="+", default=list(LIBRARIES))
    args = parser.parse_args()
    rows = []
    for dim in args.dims:
        torch.manual_seed(0)
        data = torch.randn(args.batch, dim)
        models = {lib: build(lib, "nsf", dim) for lib in args.libraries}
        for model in models.values():  # train-like parameters, not the identity
            with torch.no_grad():
                for p in model.module.parameters():
                    p.add_(0.05 * torch.randn_like(p))
        rates = {lib: {"log_prob_backward": [], "sample": []} for lib in models}
        for _ in range(args.repeats):
            for lib, model in models.items():

                def step(model=model, data=data):
                    model.module.zero_grad(set_to_none=True)
                    # a fresh tensor each step: Pyro's built-in identity cache would
                    # otherwise hand back last step's freed graph
                    model.log_prob(data.clone()).mean().backward()

                def sample(model=model):
                    with torch.no_grad():
                        model.sample(args.batch)

                step(), sample()  # warm-up
                rates[lib]["log_prob_backward"].append(_rate(step, args.batch, args.iters))
                rates[lib]["sample"].append(_rate(sample, args.batch, args.iters))
        for lib in models:
            rows.append(
                {
                    "dim": dim,
                    "library": lib,
                    "log_prob_backward_per_s": statistics.median(rates[lib]["log_prob_backward"]),
                    "sample_per_s": statistics.median(rates[lib]["sample"]),
                }
            )
            print(rows[-1], flush=True)
        ours = next(r for r in rows if r["dim"] == dim and r["library"] == "pyroflows")
        peers = [r for r in rows if r["dim"] == dim and r["library"] != "pyroflows"]
        if peers:
            ours["lp_vs_fastest_peer"] = ours["log_prob_backward_per_s"] / max(
                r["log_prob_backward_per_s"] for r in peers
            )
            ours["sample_vs_fastest_peer"] = ours["sample_per_s"] / max(r["sample_per_s"] for r in peers)
    print(
        table(
            rows,
            [
                "dim",
                "library",
                "log_prob_backward_per_s",
                "sample_per_s",
                "lp_vs_fastest_peer",
                "sample_vs_fastest_peer",
            ],
        )
    )
    print("wrote", save("throughput", {"args": vars(args), "rows": rows}))


if __name__ == "__main__":
    main()
