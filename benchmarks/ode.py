"""Guides on an ODE posterior: Lotka-Volterra on torchdiffeq (pyroflows.posteriors.ode).

Seven positive parameters, 20 noisy observations of both populations over
about two cycles; the MAP has local optima (a gradient search from the
prior lands on a wrong cycle in about one start in four). The reference is
a long NUTS run (float64, dense mass matrix, stored once with
``--reference``), cross-checked by self-normalised importance sampling
from a wide Student-t around the mode (PSIS k-hat reported).

Each guide is fitted with the default ``fit`` and scored on 4000 draws:
PSIS k-hat, the largest standardised mean error and |log sd ratio| over
the seven parameters against the NUTS reference. One torch thread.

    python benchmarks/ode.py --reference     # once: NUTS, about 11 minutes (chains in turn)
    python benchmarks/ode.py                 # the table
"""

from __future__ import annotations

import argparse
import json
import time
import warnings

import pyro
import pyro.distributions as dist
import torch
from common import FIXED_SCHEDULE, RESULTS, save, table
from pyro.infer import MCMC, NUTS
from pyro.infer.autoguide import AutoMultivariateNormal, AutoNormal

from pyroflows.diagnostics import draw, psis
from pyroflows.infer import AutoFlow, fit
from pyroflows.infer.latent import LatentSpace, init_to_mean_or_zero
from pyroflows.posteriors import ode

REFERENCE = RESULTS / "ode_reference.json"
GUIDES = {
    "AutoFlow": AutoFlow,
    "AutoNormal": lambda m: AutoNormal(m, init_loc_fn=init_to_mean_or_zero),
    "AutoMultivariateNormal": lambda m: AutoMultivariateNormal(m, init_loc_fn=init_to_mean_or_zero),
}


def data(dtype=torch.float64) -> tuple:
    d = ode.simulate(dtype=dtype)
    return d["times"], d["y"]


def importance_check(moments: dict, num_samples: int = 200_000, seed: int = 0) -> dict:
    """Moments by importance sampling from a Student-t (4 dof, 1.5x the
    Laplace scale) at the posterior mode, in unconstrained space."""
    args = data()
    space = LatentSpace(ode.lotka_volterra, *args)
    z = torch.stack([torch.tensor(moments[n][0]).log() for n in ode.PARAMETERS]).requires_grad_(True)
    opt = torch.optim.LBFGS([z], max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = -space.log_density(z, *args)
        loss.backward()
        return loss

    opt.step(closure)
    mode = z.detach()
    hessian = torch.autograd.functional.hessian(lambda x: -space.log_density(x, *args), mode)
    proposal = dist.MultivariateStudentT(4.0, mode, 1.5 * torch.linalg.cholesky(torch.linalg.inv(hessian)))
    torch.manual_seed(seed)
    draws = proposal.sample((num_samples,))
    with torch.no_grad():
        log_w = space.log_density(draws, *args) - proposal.log_prob(draws)
    weights = (log_w - log_w.logsumexp(0)).exp()
    values = draws.exp()
    mean = (weights[:, None] * values).sum(0)
    sd = (weights[:, None] * (values - mean) ** 2).sum(0).sqrt()
    return {
        "khat": psis(log_w).khat,
        "ess": float(1 / (weights**2).sum()),
        "moments": {n: [mean[i].item(), sd[i].item()] for i, n in enumerate(ode.PARAMETERS)},
    }


def reference(chains: int, warmup: int, samples: int) -> None:
    pyro.set_rng_seed(0)
    kernel = NUTS(  # Pyro's default random init can start a chain where RK4 is stiff: it then never leaves
        ode.lotka_volterra,
        full_mass=True,
        jit_compile=True,
        ignore_jit_warnings=True,
        init_strategy=init_to_mean_or_zero,
    )
    mcmc = MCMC(kernel, num_samples=samples, warmup_steps=warmup, num_chains=chains, mp_context="spawn")
    start = time.perf_counter()
    mcmc.run(*data())
    seconds = time.perf_counter() - start
    draws, diagnostics = mcmc.get_samples(), mcmc.diagnostics()
    moments = {n: [draws[n].mean().item(), draws[n].std().item()] for n in ode.PARAMETERS}
    check = importance_check(moments)
    worst = max(abs(check["moments"][n][0] - m[0]) / m[1] for n, m in moments.items())
    payload = {
        "nuts": {"chains": chains, "warmup": warmup, "samples": samples, "seconds": seconds},
        "min_ess": min(float(diagnostics[n]["n_eff"]) for n in ode.PARAMETERS),
        "max_rhat": max(float(diagnostics[n]["r_hat"]) for n in ode.PARAMETERS),
        "divergences": sum(len(v) for v in diagnostics["divergences"].values()),
        "importance_check": {**check, "max_mean_err_vs_nuts": worst},
        "moments": moments,
    }
    REFERENCE.write_text(json.dumps(payload, indent=2))
    print(json.dumps({k: v for k, v in payload.items() if k != "moments"}, indent=2))


def score(guide_name: str, dtype, moments: dict, seed: int) -> dict:
    pyro.clear_param_store()
    args = data(dtype)
    guide = GUIDES[guide_name](ode.lotka_volterra)
    cpu, wall = time.process_time(), time.perf_counter()
    fit(ode.lotka_volterra, guide, *args, progress=False, seed=seed, **FIXED_SCHEDULE)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    d = draw(ode.lotka_volterra, guide, *args, num_samples=4000)
    finite = torch.isfinite(d.log_weights)
    mean_err = max(
        abs(d.samples[n].double().mean().item() - m[0]) / m[1] for n, m in moments.items() if n in ode.PARAMETERS
    )
    log_sd = max(abs((d.samples[n].double().std() / m[1]).log().item()) for n, m in moments.items())
    khat = psis(d.log_weights).khat if finite.all() else float("inf")
    return {
        "guide": guide_name,
        "dtype": str(dtype)[6:],
        "cpu_s": cpu,
        "wall_s": wall,
        "elbo": float(d.log_weights[finite].mean()),
        "khat": khat,
        "mean_err": mean_err,
        "log_sd": log_sd,
        "pass": khat < 0.7 and mean_err < 0.1 and log_sd < 0.1,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reference", action="store_true", help="run and store the NUTS reference")
    parser.add_argument("--chains", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=500)
    parser.add_argument("--samples", type=int, default=1500)
    parser.add_argument("--guides", nargs="*", default=list(GUIDES), choices=list(GUIDES))
    parser.add_argument("--dtypes", nargs="*", default=["float32", "float64"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--results", default="ode")
    a = parser.parse_args()
    warnings.filterwarnings("ignore")
    if a.reference:
        torch.set_default_dtype(torch.float64)
        reference(a.chains, a.warmup, a.samples)
        return
    torch.set_num_threads(1)
    moments = json.loads(REFERENCE.read_text())["moments"]
    rows = []
    for dtype_name in a.dtypes:
        dtype = getattr(torch, dtype_name)
        torch.set_default_dtype(dtype)
        for guide in a.guides:
            rows.append(score(guide, dtype, moments, a.seed))
            print(rows[-1], flush=True)
    columns = ["guide", "dtype", "cpu_s", "elbo", "khat", "mean_err", "log_sd", "pass"]
    print(table(rows, columns))
    print(save(a.results, {"args": vars(a), "rows": rows}))


if __name__ == "__main__":
    main()
