"""The posterior suite: AutoFlow against Pyro's built-in guides and NUTS.

On each of the nine posteriordb posteriors, fits AutoFlow (defaults) and
Pyro's AutoNormal, AutoMultivariateNormal, AutoIAFNormal and
AutoNormalizingFlow (spline) with the same fit loop and budget
(``pyroflows.infer.fit``'s defaults: stop rule and automatic particles,
capped at ``--steps`` steps and ``--seconds`` seconds each; ``--fixed``:
exactly ``--steps`` steps at 8 particles), then reports fit seconds,
the particles used, PSIS k-hat, max
standardised mean error and max |log sd ratio| against the reference draws
(4000 guide draws). NUTS (Pyro, one chain) is run in a subprocess with a
time limit and scored the same way; ``nuts_x`` is a passing NUTS run's
seconds over the guide's (from the stored ``posteriors_nuts*.json`` with ``--no-nuts``).

Pyro's AutoNormal and AutoMultivariateNormal get ``init_to_mean_or_zero``
(their default init samples the prior, which improper priors cannot do);
AutoIAFNormal and AutoNormalizingFlow take no init option and are run as
they are.

    python benchmarks/posteriors.py                # everything (about an hour here)
    python benchmarks/posteriors.py --only kidiq-kidscore_momiq --no-nuts
    python benchmarks/posteriors.py --guides AutoFlow --no-nuts --results posteriors_stop
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import multiprocessing as mp
import time
import warnings

import pyro
import torch
from common import FIXED_SCHEDULE, RESULTS, save, table
from pyro.distributions.transforms import iterated, spline_autoregressive
from pyro.infer import autoguide

from pyroflows import posteriors
from pyroflows.diagnostics import compare, draw, nuts, psis
from pyroflows.diagnostics.arviz import posterior_draws
from pyroflows.infer import AutoFlow, StopRule, fit, init_to_mean_or_zero

GUIDES = {
    "AutoFlow": lambda m: AutoFlow(m),
    "AutoNormal": lambda m: autoguide.AutoNormal(m, init_loc_fn=init_to_mean_or_zero),
    "AutoMultivariateNormal": lambda m: autoguide.AutoMultivariateNormal(m, init_loc_fn=init_to_mean_or_zero),
    "AutoIAFNormal": lambda m: autoguide.AutoIAFNormal(m),
    "AutoNormalizingFlow": lambda m: autoguide.AutoNormalizingFlow(
        m, functools.partial(iterated, 2, spline_autoregressive)
    ),
}


def score(post, samples: dict, khat: float | None) -> dict:
    c = compare(posteriors.flatten_draws(samples), post.reference_dict())
    passed = (khat is None or khat < 0.7) and c.passes()
    return {
        "khat": khat,
        "mean_err": c.max_mean_error,
        "log_sd": c.max_log_sd_ratio,
        "energy": c.energy,
        "pass": passed,
    }


class _ParticleLog(logging.Handler):
    """Keeps the particle count ``num_particles="auto"`` chose (fit logs it)."""

    def __init__(self) -> None:
        super().__init__()
        self.chosen = None

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("num_particles='auto'"):
            self.chosen = record.args[0]


def run_guide(post, name: str, steps: int, seconds: float, seed: int, fixed: bool = False, lr: float = 5e-3) -> dict:
    """One guide fitted with fit's defaults (or its fixed schedule), scored on 4000 draws."""
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    chosen = _ParticleLog()
    logging.getLogger("pyroflows.fit").addHandler(chosen)
    logging.getLogger("pyroflows.fit").setLevel(logging.INFO)
    try:
        guide = GUIDES[name](post.model)
        rule = None if fixed else StopRule()
        options = FIXED_SCHEDULE if fixed else {"stop": rule}
        start, cpu = time.perf_counter(), time.process_time()
        kw = {"num_steps": steps, "max_seconds": seconds, "lr": lr, "progress": False, "seed": seed, **options}
        losses = fit(post.model, guide, *post.args, **kw, **post.kwargs)
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu
        d = draw(post.model, guide, *post.args, num_samples=4000, **post.kwargs)
        lw = d.log_weights
        khat = psis(lw).khat if torch.isfinite(lw).all() else float("inf")
        stopped = {"stop": rule.reason.split(":")[0], "rule_khat": rule.checks[-1][1]} if rule else {}
        run = {"wall_s": wall, "cpu_s": cpu, "steps": len(losses), "particles": chosen.chosen or 8}
        return {**run, **score(post, d.samples, khat), **stopped}
    except Exception as err:  # noqa: BLE001 - a crash is a result here
        return {"error": f"{type(err).__name__}: {str(err).splitlines()[0][:80]}"}
    finally:
        logging.getLogger("pyroflows.fit").removeHandler(chosen)


def nuts_ratios(rows: list[dict], nuts_rows: list[dict]) -> None:
    """Add ``nuts_x``: a passing NUTS run's seconds over the guide's CPU seconds, where both pass."""
    passed = {r["posterior"]: r["wall_s"] for r in nuts_rows if r["method"] == "NUTS" and r.get("pass")}
    for row in rows:
        if row["method"] != "NUTS" and row.get("pass") and row["posterior"] in passed:
            row["nuts_x"] = passed[row["posterior"]] / row["cpu_s"]


def _nuts_worker(name, num_samples, warmup, queue):
    torch.set_num_threads(1)
    post = posteriors.load(name)
    idata, seconds = nuts(post.model, *post.args, num_samples=num_samples, warmup_steps=warmup, **post.kwargs)
    draws = {k: torch.as_tensor(v) for k, v in posterior_draws(idata).items()}
    queue.put({"wall_s": seconds, "steps": num_samples + warmup, **score(post, draws, None)})


def run_nuts(name: str, num_samples: int, warmup: int, timeout: float) -> dict:
    queue = mp.get_context("spawn").Queue()
    proc = mp.get_context("spawn").Process(target=_nuts_worker, args=(name, num_samples, warmup, queue))
    proc.start()
    proc.join(timeout)
    if proc.is_alive():
        proc.terminate()
        return {"error": f"timed out after {timeout:.0f} s"}
    return queue.get() if not queue.empty() else {"error": f"exit code {proc.exitcode}"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="*", default=list(posteriors.NAMES))
    parser.add_argument("--guides", nargs="*", default=list(GUIDES))
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lr", type=float, default=5e-3, help="fit's peak learning rate (its default 5e-3)")
    parser.add_argument("--no-nuts", action="store_true")
    parser.add_argument(
        "--fixed", action="store_true", help="fit's fixed schedule: exactly --steps steps at 8 particles (else caps)"
    )
    parser.add_argument("--nuts-samples", type=int, default=1000)
    parser.add_argument("--nuts-warmup", type=int, default=500)
    parser.add_argument("--nuts-timeout", type=float, default=900.0)
    parser.add_argument("--results", default="posteriors", help="name of the JSON file under results/")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest for these small models)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    rows = []
    for name in args.only:
        post = posteriors.load(name)
        for guide in args.guides:
            row = {
                "posterior": name.split("-")[0],
                "method": guide,
                **run_guide(post, guide, args.steps, args.seconds, args.seed, args.fixed, args.lr),
            }
            rows.append(row)
            print(row, flush=True)
        if not args.no_nuts:
            row = {
                "posterior": name.split("-")[0],
                "method": "NUTS",
                **run_nuts(name, args.nuts_samples, args.nuts_warmup, args.nuts_timeout),
            }
            rows.append(row)
            print(row, flush=True)
    stored = [
        row for path in sorted(RESULTS.glob("posteriors_nuts*.json")) for row in json.loads(path.read_text())["rows"]
    ]
    nuts_ratios(rows, rows if not args.no_nuts else stored)
    columns = [
        "posterior",
        "method",
        "wall_s",
        "cpu_s",
        "steps",
        "particles",
        "khat",
        "mean_err",
        "log_sd",
        "pass",
        "nuts_x",
        "rule_khat",
        "stop",
        "error",
    ]
    print(table(rows, columns))
    flow_rows = [r for r in rows if r["method"] == "AutoFlow"]
    print(
        f"\nAutoFlow passes (k-hat < 0.7, mean err < 0.1, |log sd| < 0.1) on "
        f"{sum(bool(r.get('pass')) for r in flow_rows)} of {len(flow_rows)}"
    )
    save(args.results, {"args": vars(args), "rows": rows})


if __name__ == "__main__":
    main()
