"""NeuTra HMC against plain NUTS, side by side in one run.

Two funnel-shaped posteriors where plain NUTS struggles: centred eight
schools (posteriordb's data) and Neal's funnel in 10 dimensions. For each:

- plain NUTS: Pyro's NUTS on the model's own unconstrained potential;
- NeuTra: the default ``AutoFlow`` trained with the default ``fit``, then
  :func:`pyroflows.infer.neutra` (NUTS in the flow's base space).

Both run the same chains, warm-up and draws, one chain after another, on
one torch thread. Reported per method: seconds of sampling (warm-up
included), gradient evaluations, ms per gradient, divergent transitions,
the smallest bulk ESS over every latent coordinate (ArviZ), ESS per second
of sampling, and for NeuTra also ESS per second counting the flow's fit.

    python benchmarks/neutra.py
    python benchmarks/neutra.py --models funnel --seed 1
"""

from __future__ import annotations

import argparse
import time
import warnings

import arviz as az
import numpy as np
import pyro
import torch
from common import FIXED_SCHEDULE, save, table
from pyro.infer import MCMC, NUTS
from pyro.infer.mcmc.util import initialize_model

from pyroflows import posteriors
from pyroflows.infer import AutoFlow, fit, neutra
from pyroflows.posteriors import models


def eight_schools():
    post = posteriors.load("eight_schools-eight_schools_noncentered")
    return models.eight_schools_centered, post.args, post.kwargs, "tau"


def funnel():
    return models.funnel, (10,), {}, "v"


MODELS = {"eight_schools_centered": eight_schools, "funnel": funnel}


def min_ess(posterior: dict) -> float:
    ess = az.ess(az.from_dict(posterior=posterior), method="bulk")
    return min(float(ess[name].min()) for name in ess.data_vars)


def plain_nuts(model, args, kwargs, chains: int, warmup: int, samples: int, seed: int) -> tuple[dict, dict]:
    pyro.set_rng_seed(seed)
    draws, divergences, calls = [], 0, [0]
    start = time.perf_counter()
    for _ in range(chains):
        init, potential, transforms, _ = initialize_model(model, args, kwargs)

        def counted(params, potential=potential):
            calls[0] += 1
            return potential(params)

        mcmc = MCMC(
            NUTS(potential_fn=counted),
            num_samples=samples,
            warmup_steps=warmup,
            initial_params=init,
            transforms=transforms,
            disable_progbar=True,
        )
        mcmc.run()
        draws.append({k: v.numpy() for k, v in mcmc.get_samples().items()})
        divergences += len(mcmc.diagnostics()["divergences"]["chain 0"])
    seconds = time.perf_counter() - start
    posterior = {k: np.stack([d[k] for d in draws]) for k in draws[0]}
    return posterior, {"seconds": seconds, "gradient_evaluations": calls[0], "divergences": divergences}


def row(method: str, name: str, posterior: dict, stats: dict, hard: str, transitions: int, fit_s=None) -> dict:
    ess = min_ess(posterior)
    out = {
        "model": name,
        "method": method,
        "sample_s": stats["seconds"],
        "ms_per_grad": 1000 * stats["seconds"] / stats["gradient_evaluations"],
        "grads_per_draw": stats["gradient_evaluations"] / transitions,
        "divergent_pct": 100 * stats["divergences"] / transitions,
        "min_ess": ess,
        "ess_per_s": ess / stats["seconds"],
        f"{hard}_mean": float(np.mean(posterior[hard])),
        f"{hard}_sd": float(np.std(posterior[hard])),
    }
    if fit_s is not None:
        out["fit_s"] = fit_s
        out["ess_per_s_with_fit"] = ess / (stats["seconds"] + fit_s)
    return out


def run(name: str, chains: int, warmup: int, samples: int, seed: int) -> list[dict]:
    model, args, kwargs, hard = MODELS[name]()
    transitions = chains * (warmup + samples)
    posterior, stats = plain_nuts(model, args, kwargs, chains, warmup, samples, seed)
    rows = [row("NUTS", name, posterior, stats, hard, transitions)]
    pyro.clear_param_store()
    guide = AutoFlow(model)
    start = time.perf_counter()
    fit(model, guide, *args, progress=False, seed=seed, **FIXED_SCHEDULE, **kwargs)
    fit_s = time.perf_counter() - start
    idata, stats = neutra(
        model, guide, *args, num_samples=samples, warmup_steps=warmup, num_chains=chains, seed=seed, **kwargs
    )
    posterior = {k: v.values for k, v in idata.posterior.items()}
    rows.append(row("NeuTra (AutoFlow)", name, posterior, stats, hard, transitions, fit_s))
    rows[-1]["ess_per_s_ratio"] = rows[-1]["ess_per_s"] / rows[0]["ess_per_s"]
    rows[-1]["ratio_with_fit"] = rows[-1]["ess_per_s_with_fit"] / rows[0]["ess_per_s"]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="*", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--chains", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=500)
    parser.add_argument("--samples", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--results", default="neutra")
    a = parser.parse_args()
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    rows = [r for name in a.models for r in run(name, a.chains, a.warmup, a.samples, a.seed)]
    columns = ["model", "method", "fit_s", "sample_s", "ms_per_grad", "grads_per_draw", "divergent_pct"]
    columns += ["min_ess", "ess_per_s", "ess_per_s_with_fit", "ess_per_s_ratio", "ratio_with_fit"]
    print(table(rows, columns))
    print(save(a.results, {"args": vars(a), "rows": rows}))


if __name__ == "__main__":
    main()
