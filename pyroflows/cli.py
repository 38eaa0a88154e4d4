"""The ``pyroflows`` command line: ``pyroflows demo`` and ``pyroflows fit``."""

from __future__ import annotations

import argparse
import multiprocessing
import sys
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from pyroflows import fit_command

DEMO_POSTERIOR = "eight_schools-eight_schools_noncentered"


def _summary_row(label: str, elbo: float, khat: float, tau: np.ndarray) -> str:
    q5, q50, q95 = np.quantile(tau, [0.05, 0.5, 0.95])
    elbo_s = f"{elbo:9.2f}" if np.isfinite(elbo) else f"{'-':>9}"
    khat_s = f"{khat:6.2f}" if np.isfinite(khat) else f"{'-':>6}"
    return f"{label:<12} {elbo_s} {khat_s} {tau.mean():9.2f} {tau.std():8.2f} {q5:7.2f} {q50:7.2f} {q95:7.2f}"


# The mean-field comparison has converged after 600 steps at this rate (ELBO
# -31.61, as after 1000 at 0.02; -31.82 after 2000 at fit's default 0.005);
# the stop rule could not stop it early: its k-hat stays above 0.5 here.
MEAN_FIELD = {"num_steps": 600, "lr": 0.05, "stop": None, "num_particles": 8}


def demo(out: str, num_steps: int, seed: int, progress: bool) -> int:
    """Fit AutoFlow (fit's defaults) and, in a second process meanwhile, a
    mean-field guide to eight schools; print and write results."""
    import arviz as az

    start, folder = time.perf_counter(), Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    print(f"pyroflows demo: eight schools (non-centred); flow: fit's defaults (stop rule, at most {num_steps} steps)")
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        mean_field = pool.submit(_demo_fit, "mean-field", str(folder), num_steps, seed, False)
        print(_demo_fit("flow", str(folder), num_steps, seed, progress))
        print(mean_field.result())
    results = {label: az.from_netcdf(str(folder / f"{label}.nc")) for label in ("flow", "mean-field")}
    from pyroflows import posteriors

    _report(results, posteriors.load(DEMO_POSTERIOR), folder, start)
    return 0


def _demo_fit(label: str, folder: str, num_steps: int, seed: int, progress: bool) -> str:
    """One of the demo's fits, on one torch thread, written to ``folder/label.nc``; says how it ended."""
    import pyro
    import torch
    from pyro.infer.autoguide import AutoNormal

    from pyroflows import posteriors
    from pyroflows.diagnostics import to_inference_data
    from pyroflows.infer import AutoFlow, StopRule, fit

    threads, post, rule = torch.get_num_threads(), posteriors.load(DEMO_POSTERIOR), StopRule()
    make, options = (AutoFlow, {"stop": rule}) if label == "flow" else (AutoNormal, MEAN_FIELD)
    options = {**options, "num_steps": min(num_steps, options.get("num_steps", num_steps))}
    torch.set_num_threads(1)  # small tensors: a second thread only adds overhead
    try:
        pyro.clear_param_store()
        guide = make(post.model)
        with warnings.catch_warnings():  # the reason is printed
            warnings.filterwarnings("ignore", "fit stopped")
            losses = fit(post.model, guide, *post.args, seed=seed, progress=progress, **options, **post.kwargs)
        idata = to_inference_data(post.model, guide, *post.args, num_samples=4000, **post.kwargs)
        idata.to_netcdf(str(Path(folder) / f"{label}.nc"))
    finally:
        torch.set_num_threads(threads)
    return f"{label}: {len(losses)} steps ({rule.reason if label == 'flow' else 'lr ' + str(options['lr'])})"


def _report(results: dict, post, folder: Path, start: float) -> None:
    """Print the table against the reference draws and write the pair plot."""
    from pyroflows.diagnostics import pair_plot

    ref = post.reference_dict()
    print(f"\n{'guide':<12} {'ELBO':>9} {'k-hat':>6} {'tau mean':>9} {'tau sd':>8} {'5%':>7} {'50%':>7} {'95%':>7}")
    draws = {}
    for label, idata in results.items():
        elbo = float(idata.sample_stats["log_weight"].mean())
        tau = idata.posterior["tau"].values.reshape(-1)
        print(_summary_row(label, elbo, idata.attrs["khat"], tau))
        theta = idata.posterior["theta"].values.reshape(-1, 8)
        draws[label] = {"mu": idata.posterior["mu"].values.reshape(-1), "log tau": np.log(tau), "theta[1]": theta[:, 0]}
    print(_summary_row("reference", np.nan, np.nan, ref["tau"]))
    draws["reference (NUTS)"] = {"mu": ref["mu"], "log tau": np.log(ref["tau"]), "theta[1]": ref["theta[1]"]}
    pair_plot(draws, ["mu", "log tau", "theta[1]"], str(folder / "pair_plot.png"))
    reliable = "reliable" if results["flow"].attrs["khat"] < 0.7 else "NOT reliable (k-hat >= 0.7)"
    print(f"\nThe flow guide's importance sampling is {reliable}. Wrote {folder}/: pair_plot.png,")
    print(f"flow.nc and mean-field.nc (ArviZ InferenceData). Took {time.perf_counter() - start:.0f} s.")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pyroflows", description="Normalizing flows for Pyro.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("demo", help="flow vs mean-field guide on eight schools, against reference draws")
    p.add_argument("--out", default="pyroflows-demo", help="output folder (default: pyroflows-demo)")
    p.add_argument("--steps", type=int, default=2000, help="most SVI steps per guide (default: 2000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    fit_command.add_parser(sub)
    args = parser.parse_args(argv)
    if args.command == "fit":
        return fit_command.run_fit(args, parser.error)
    if args.steps < 1:
        parser.error(f"--steps must be positive, got {args.steps}")
    return demo(args.out, args.steps, args.seed, not args.quiet)


if __name__ == "__main__":
    sys.exit(main())
