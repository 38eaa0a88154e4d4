"""Reference posteriors for benchmarks/hierarchical.py, stored once.

The hierarchical regression is conjugate given its five globals, so the group
effects integrate out exactly. NUTS runs on the 5-parameter collapsed
posterior (float64, 4 chains), and each global draw gets one exact draw of
every group's (a_j, b_j) from their Gaussian conditional. That gives exact
joint reference draws of all 2 G + 5 latents at the cost of a 5-D NUTS run,
in both parametrisations (a_raw = (a - mu_a) / sigma_a).
``--check-direct`` also runs NUTS on the non-centred model itself (the 50-group
case) and prints the largest disagreement with the collapsed reference.

    python benchmarks/hierarchical_reference.py --groups 50 1000
    python benchmarks/hierarchical_reference.py --groups 50 --check-direct
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import pyro
import torch
from pyro.infer import MCMC, NUTS

from pyroflows.posteriors import hierarchical as h

RESULTS = Path(__file__).parent / "results" / "hierarchical_reference.json"
ROWS_PER_GROUP = 10


def reference_draws(num_groups: int, num_samples: int, warmup: int, chains: int, seed: int = 0) -> dict:
    data = h.simulate(num_groups, ROWS_PER_GROUP, seed=seed, dtype=torch.float64)
    stats = h.group_statistics(data["x_grouped"], data["y_grouped"])
    pyro.set_rng_seed(seed)
    start = time.perf_counter()
    mcmc = MCMC(NUTS(h.collapsed_regression), num_samples=num_samples, warmup_steps=warmup, num_chains=chains)
    mcmc.run(stats)
    seconds = time.perf_counter() - start
    draws = mcmc.get_samples()
    diagnostics = mcmc.diagnostics()
    min_ess = min(float(diagnostics[name]["n_eff"]) for name in h.GLOBALS)
    max_rhat = max(float(diagnostics[name]["r_hat"]) for name in h.GLOBALS)
    mu = torch.stack([draws["mu_a"], draws["mu_b"]], -1)
    scales = torch.stack([draws["sigma_a"], draws["sigma_b"]], -1)
    mean, cov = h.group_posterior(mu, scales, draws["sigma"], stats)
    effects = mean + (torch.linalg.cholesky(cov) @ torch.randn_like(mean).unsqueeze(-1)).squeeze(-1)
    draws["a"], draws["b"] = effects[..., 0], effects[..., 1]
    draws["a_raw"] = (draws["a"] - draws["mu_a"][:, None]) / draws["sigma_a"][:, None]
    draws["b_raw"] = (draws["b"] - draws["mu_b"][:, None]) / draws["sigma_b"][:, None]
    # the group effects' moments by total expectation and variance (less Monte Carlo error than the draws)
    a_var = cov[..., 0, 0].mean(0) + mean[..., 0].var(0)
    b_var = cov[..., 1, 1].mean(0) + mean[..., 1].var(0)
    summary = {name: [draws[name].mean(0).tolist(), draws[name].std(0).tolist()] for name in draws}
    summary["a"] = [mean[..., 0].mean(0).tolist(), a_var.sqrt().tolist()]
    summary["b"] = [mean[..., 1].mean(0).tolist(), b_var.sqrt().tolist()]
    return {
        "num_groups": num_groups,
        "rows_per_group": ROWS_PER_GROUP,
        "seed": seed,
        "nuts": {"chains": chains, "warmup": warmup, "samples": num_samples, "seconds": seconds},
        "min_ess_globals": min_ess,
        "max_rhat_globals": max_rhat,
        "moments": summary,
    }


def check_direct(reference: dict, num_samples: int, warmup: int) -> None:
    data = h.simulate(reference["num_groups"], ROWS_PER_GROUP, dtype=torch.float64)
    pyro.set_rng_seed(1)
    mcmc = MCMC(NUTS(h.regression), num_samples=num_samples, warmup_steps=warmup, num_chains=2)
    mcmc.run(data["x"], data["group"], reference["num_groups"], data["y"], centered=False)
    draws = mcmc.get_samples()
    worst = 0.0
    for name in ("mu_a", "mu_b", "sigma_a", "sigma_b", "sigma", "a_raw", "b_raw"):
        mean, sd = (torch.tensor(v, dtype=torch.float64) for v in reference["moments"][name])
        err = ((draws[name].mean(0) - mean).abs() / sd).max().item()
        ratio = (draws[name].std(0) / sd).log().abs().max().item()
        print(f"{name:>8}: mean error {err:.3f} sd, |log sd ratio| {ratio:.3f}")
        worst = max(worst, err)
    print(f"direct NUTS against the collapsed reference: worst mean error {worst:.3f} sd")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--groups", type=int, nargs="+", default=[50, 1000])
    parser.add_argument("--samples", type=int, default=5000)
    parser.add_argument("--warmup", type=int, default=1000)
    parser.add_argument("--chains", type=int, default=4)
    parser.add_argument("--check-direct", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    stored = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    for groups in args.groups:
        if args.check_direct:
            check_direct(stored[str(groups)], 2000, 1000)
            continue
        stored[str(groups)] = reference_draws(groups, args.samples, args.warmup, args.chains)
        print(groups, "groups:", {k: v for k, v in stored[str(groups)].items() if k != "moments"}, flush=True)
        RESULTS.write_text(json.dumps(stored))


if __name__ == "__main__":
    main()
