"""AutoFlow on hierarchical regression, the model Pyro users write every day.

Four tables, side by side with Pyro's AutoNormal (and AutoFlow's joint form):

* ``small``: 50 groups (105 latents), centred and non-centred, float32 and
  float64; ``fit``'s fixed schedule (2000 steps, 8 particles; with
  ``--fit-defaults`` its defaults: stop rule, timed particles); PSIS k-hat, the largest
  standardised mean error and |log sd ratio| over every latent (globals and
  each group's) against the stored reference
  (``hierarchical_reference.py``), CPU seconds on one thread.
* ``medium``: 1000 groups (2005 latents): ms per step, guide parameters, the
  final ELBO (4000 draws), and the globals against the reference.
* ``glmm``: the ``medium`` measures on 1000 groups of 10 rows of the Poisson
  and logistic random-effect models of ``member_flow.py`` (non-Gaussian
  locals, so AutoFlow keeps its member flow), against the quadrature
  reference of ``glmm_reference.py``, globals and each group's effects.
* ``large``: 20,000 groups and 10^6 rows, 500 groups per step, on three
  simulated data sets: wall and CPU seconds, peak memory, whether the
  globals' 95% intervals (the guide's and the exact posterior's) cover the
  data-generating values, and the globals' errors against the Laplace
  approximation of the exactly collapsed model (``collapsed_moments``).

    python benchmarks/hierarchical.py                    # all four
    python benchmarks/hierarchical.py --tables small    # updates that table only
"""

from __future__ import annotations

import argparse
import json
import resource
import time
import warnings
from pathlib import Path

import numpy as np
import pyro
import torch
from common import FIXED_SCHEDULE, save, table
from pyro.distributions.transforms import biject_to
from pyro.infer.autoguide import AutoNormal

from pyroflows.diagnostics import draw, psis
from pyroflows.infer import AutoFlow, LatentSpace, fit, init_to_mean_or_zero, laplace
from pyroflows.posteriors import hierarchical as h

REFERENCE = Path(__file__).parent / "results" / "hierarchical_reference.json"
GLMM_REFERENCE = REFERENCE.parent / "glmm_reference.json"
GUIDES = {
    "AutoFlow": lambda m: AutoFlow(m),
    "AutoFlow (joint)": lambda m: AutoFlow(m, structure="joint"),
    "AutoFlow (learned)": lambda m: AutoFlow(m, conditional="learned"),
    "AutoNormal": lambda m: AutoNormal(m, init_loc_fn=init_to_mean_or_zero),
}


def errors(samples: dict, moments: dict, names) -> tuple[float, float]:
    """Largest standardised mean error and |log sd ratio| over ``names``."""
    worst_mean, worst_sd = 0.0, 0.0
    for name in names:
        mean, sd = (torch.tensor(v, dtype=torch.float64) for v in moments[name][:2])
        value = samples[name].double().reshape(len(samples[name]), -1)
        worst_mean = max(worst_mean, ((value.mean(0) - mean.reshape(-1)).abs() / sd.reshape(-1)).max().item())
        worst_sd = max(worst_sd, (value.std(0) / sd.reshape(-1)).log().abs().max().item())
    return worst_mean, worst_sd


def run(guide_name, model, args, kwargs, steps, moments, names, seed=0, options=FIXED_SCHEDULE, local_names=()):
    """One fit's measures; errors over ``names`` (and, as ``local_*``, over ``local_names``)."""
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    guide = GUIDES[guide_name](model)
    cpu, wall = time.process_time(), time.perf_counter()
    losses = fit(model, guide, *args, num_steps=steps, progress=False, seed=seed, **options, **kwargs)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    d = draw(model, guide, *args, num_samples=4000, **kwargs)
    finite = torch.isfinite(d.log_weights)
    khat = psis(d.log_weights).khat if finite.all() else float("inf")
    mean_err, log_sd = errors(d.samples, moments, names)
    local_errors = {}
    if local_names:
        local_errors["local_mean_err"], local_errors["local_log_sd"] = errors(d.samples, moments, local_names)
    return {
        "guide": guide_name,
        "cpu_s": cpu,
        "wall_s": wall,
        "params": sum(p.numel() for p in guide.parameters()),
        "elbo": float(d.log_weights[finite].mean()),
        "khat": khat,
        "mean_err": mean_err,
        "log_sd": log_sd,
        "pass": khat < 0.7 and mean_err < 0.1 and log_sd < 0.1,
        "final_loss": float(np.mean(losses[-100:])),
        "steps": len(losses),
        **local_errors,
    }


def small(reference: dict, guides, steps: int, options: dict) -> list[dict]:
    rows = []
    moments = reference["50"]["moments"]
    for dtype in (torch.float32, torch.float64):
        data = h.simulate(50, 10, dtype=dtype)
        args = (data["x"], data["group"], 50, data["y"])
        for centered in (True, False):
            names = h.GLOBALS + (("a", "b") if centered else ("a_raw", "b_raw", "a", "b"))
            for guide in guides:
                row = run(guide, h.regression, args, {"centered": centered}, steps, moments, names, options=options)
                rows.append({"form": "centred" if centered else "non-centred", "dtype": str(dtype)[6:], **row})
                print(rows[-1], flush=True)
    return rows


def step_ms(model, guide, args, kwargs, steps: int = 30) -> float:
    fit(model, guide, *args, num_steps=5, progress=False, **FIXED_SCHEDULE, **kwargs)  # set up outside the timing
    start = time.perf_counter()
    fit(model, guide, *args, num_steps=steps, progress=False, **FIXED_SCHEDULE, **kwargs)
    return 1000 * (time.perf_counter() - start) / steps


def medium(reference: dict, guides, steps: int) -> list[dict]:
    rows = []
    moments = reference["1000"]["moments"]
    data = h.simulate(1000, 10)
    args = (data["x"], data["group"], 1000, data["y"])
    for guide_name in guides:
        if guide_name == "AutoFlow (joint)":
            continue  # 2005-D joint flow: 45M parameters, ~1 s per step (issue 22's figures)
        pyro.clear_param_store()
        ms = step_ms(h.regression, GUIDES[guide_name](h.regression), args, {})
        row = run(guide_name, h.regression, args, {}, steps, moments, h.GLOBALS)
        rows.append({"groups": 1000, "ms_per_step": ms, **row})
        print(rows[-1], flush=True)
    return rows


def glmm(guides, steps: int, options: dict) -> list[dict]:
    """``medium``'s measures on non-Gaussian random effects, against the
    quadrature reference (``glmm_reference.py``): the globals' errors, and
    the groups' effects' (``local_mean_err``, ``local_log_sd``)."""
    from member_flow import glmm_data

    reference = json.loads(GLMM_REFERENCE.read_text())
    rows = []
    for name, (model, args) in glmm_data().items():
        moments = reference[name]["moments"]
        locals_ = [site for site in moments if site in ("a", "b", "s")]
        names = [site for site in moments if site not in locals_]
        for guide_name in guides:
            if guide_name == "AutoFlow (joint)":
                continue
            pyro.clear_param_store()
            ms = step_ms(model, GUIDES[guide_name](model), args, {})
            row = run(guide_name, model, args, {}, steps, moments, names, options=options, local_names=locals_)
            rows.append({"model": name, "groups": 1000, "ms_per_step": ms, **row})
            print(rows[-1], flush=True)
    return rows


def collapsed_moments(data: dict, num_samples: int = 100_000) -> dict:
    """The globals' posterior means, sds and 95% intervals from the Laplace
    approximation of the collapsed model (group effects integrated out
    exactly), float64: the reference for the large table, where the
    posterior is Gaussian to within a fraction of a percent of an sd (and
    NUTS on 20,000 groups is out of reach)."""
    stats = h.group_statistics(data["x_grouped"].double(), data["y_grouped"].double())
    space = LatentSpace(h.collapsed_regression, stats)
    loc, scale_tril = laplace(space, stats)
    draws = loc + torch.randn(num_samples, len(loc), dtype=loc.dtype) @ scale_tril.T
    values = constrained_globals(space, draws)
    return {name: (v.mean().item(), v.std().item(), *interval(v)) for name, v in values.items()}


def interval(values: torch.Tensor) -> list[float]:
    """The central 95% interval of draws."""
    return values.double().quantile(values.new_tensor([0.025, 0.975], dtype=torch.float64)).tolist()


def constrained_globals(space, draws: torch.Tensor) -> dict:
    out, pos = {}, 0
    for name, site in space.sites.items():
        out[name] = biject_to(site["fn"].support)(draws[:, pos])
        pos += 1
    return out


def large(steps: int, seed: int, groups: int = 20_000, rows_per_group: int = 50, batch: int = 500) -> dict:
    """One simulated data set (``seed``): the fit's cost, and whether the
    guide's and the exact posterior's 95% intervals cover the
    data-generating globals (an exact posterior misses each with
    probability 0.05, so a data set can defeat any guide: run several)."""
    data = h.simulate(groups, rows_per_group, seed=seed)
    args = (data["x_grouped"], data["y_grouped"], batch)
    pyro.clear_param_store()
    guide = AutoFlow(h.grouped_regression)
    cpu, wall = time.process_time(), time.perf_counter()
    fit(h.grouped_regression, guide, *args, num_steps=steps, progress=False, seed=seed, **FIXED_SCHEDULE)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    samples = guide.sample_posterior(4000)
    exact = collapsed_moments(data)
    covered = {name: interval(samples[name])[0] <= h.TRUTH[name] <= interval(samples[name])[1] for name in h.GLOBALS}
    exact_covered = {name: exact[name][2] <= h.TRUTH[name] <= exact[name][3] for name in h.GLOBALS}
    mean_err, log_sd = errors(samples, exact, h.GLOBALS)
    row = {
        "seed": seed,
        "groups": groups,
        "rows": groups * rows_per_group,
        "batch_groups": batch,
        "steps": steps,
        "wall_s": wall,
        "cpu_s": cpu,
        "peak_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "params": sum(p.numel() for p in guide.parameters()),
        "covered": all(covered.values()),
        "exact_covered": all(exact_covered.values()),
        "missed": [name for name, ok in covered.items() if not ok],
        "exact_missed": [name for name, ok in exact_covered.items() if not ok],
        "mean_err": mean_err,
        "log_sd": log_sd,
        **{f"{k}_mean": float(samples[k].mean()) for k in h.GLOBALS},
    }
    print(row, flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tables", nargs="*", default=["small", "medium", "glmm", "large"])
    parser.add_argument("--guides", nargs="*", default=list(GUIDES))
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--large-steps", type=int, default=3000)
    parser.add_argument("--large-seeds", type=int, nargs="*", default=[0, 1, 2])
    parser.add_argument("--results", default="hierarchical")
    parser.add_argument(
        "--fit-defaults", action="store_true", help="small and glmm tables: fit's defaults (stop rule, timed particles)"
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    reference = json.loads(REFERENCE.read_text())
    results = {"args": vars(args)}
    if "small" in args.tables:
        options = {} if args.fit_defaults else FIXED_SCHEDULE
        results["small"] = small(reference, args.guides, args.steps, options)
        columns = ["form", "dtype", "guide", "cpu_s", "steps", "khat", "mean_err", "log_sd", "pass"]
        print(table(results["small"], columns))
    if "medium" in args.tables:
        results["medium"] = medium(reference, args.guides, args.steps)
        columns = ["guide", "ms_per_step", "params", "elbo", "khat", "mean_err", "log_sd"]
        print(table(results["medium"], columns))
    if "glmm" in args.tables:
        results["glmm"] = glmm(args.guides, args.steps, {} if args.fit_defaults else FIXED_SCHEDULE)
        columns = ["model", "guide", "ms_per_step", "cpu_s", "steps", "elbo", "khat", "mean_err", "log_sd"]
        print(table(results["glmm"], columns + ["local_mean_err", "local_log_sd"]))
    if "large" in args.tables:
        results["large"] = [large(args.large_steps, seed) for seed in args.large_seeds]
        columns = ["seed", "wall_s", "cpu_s", "peak_gb", "covered", "exact_covered", "missed", "mean_err", "log_sd"]
        print(table(results["large"], columns))
    path = REFERENCE.parent / f"{args.results}.json"
    if path.exists():  # tables not rerun keep their last results
        results = {**json.loads(path.read_text()), **results}
    save(args.results, results)


if __name__ == "__main__":
    main()
