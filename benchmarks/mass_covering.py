"""What mass-covering fine-tuning does on the nine-posterior suite.

For each posterior: AutoFlow with the default ``fit``, scored as in
``posteriors.py`` (k-hat, max standardised mean error, max |log sd ratio|,
energy distance against the reference draws); then
``fit_mass_covering`` (Renyi bound, alpha 0.5, 32 particles, 1000 steps)
from that guide, scored again. One torch thread.

    python benchmarks/mass_covering.py
    python benchmarks/mass_covering.py --only gp_pois_regr-gp_pois_regr
"""

from __future__ import annotations

import argparse
import time
import warnings

import pyro
import torch
from common import FIXED_SCHEDULE, save, table
from posteriors import score

from pyroflows import posteriors
from pyroflows.diagnostics import draw, psis
from pyroflows.infer import AutoFlow, fit, fit_mass_covering


def scored(post, guide) -> dict:
    d = draw(post.model, guide, *post.args, num_samples=4000, **post.kwargs)
    finite = torch.isfinite(d.log_weights).all()
    return score(post, d.samples, psis(d.log_weights).khat if finite else float("inf"))


def run(name: str, alpha: float, steps: int, seed: int) -> list[dict]:
    post = posteriors.load(name)
    pyro.clear_param_store()
    guide = AutoFlow(post.model)
    start = time.perf_counter()
    fit(post.model, guide, *post.args, progress=False, seed=seed, **FIXED_SCHEDULE, **post.kwargs)
    base = {"posterior": name.split("-")[0], "phase": "fit", "wall_s": time.perf_counter() - start}
    rows = [{**base, **scored(post, guide)}]
    start = time.perf_counter()
    try:
        fit_mass_covering(
            post.model, guide, *post.args, alpha=alpha, num_steps=steps, progress=False, seed=seed, **post.kwargs
        )
        rows.append({**base, "phase": "+ mass covering", "wall_s": time.perf_counter() - start, **scored(post, guide)})
    except Exception as err:  # noqa: BLE001 - a crash is a result here
        rows.append({**base, "phase": "+ mass covering", "error": f"{type(err).__name__}: {str(err)[:80]}"})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="*", default=list(posteriors.NAMES))
    parser.add_argument("--alpha", type=float, default=0.5)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--results", default="mass_covering")
    args = parser.parse_args()
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    rows = []
    for name in args.only:
        for row in run(name, args.alpha, args.steps, args.seed):
            rows.append(row)
            print(row, flush=True)
    print(table(rows, ["posterior", "phase", "wall_s", "khat", "mean_err", "log_sd", "energy", "pass", "error"]))
    save(args.results, {"args": vars(args), "rows": rows})


if __name__ == "__main__":
    main()
