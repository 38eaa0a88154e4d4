"""Free-form flows on the 2-D densities: residual flows and FFJORD against peers.

Same data sets and splits as ``density_2d`` (FFJORD's generators, 20k train /
5k test), Adam 1e-3, batch 512:

* residual flow: pyroflows ``resflow`` vs normflows' ``Residual`` blocks, both
  ``--blocks`` blocks of a 64x64 LipSwish MLP (Lipschitz 0.97) with ActNorm,
  Russian-roulette log-det (geometric p = 0.5, 2 exact terms, Neumann
  gradient) for training; test NLL with exact log-dets (both libraries);
* FFJORD: pyroflows ``ffjord`` (64x64 concat-squash, dopri5, rtol = atol =
  1e-5, exact trace) vs zuko's ``CNF`` (64x64, its defaults), and pyroflows
  with the RNODE regularisers (kinetic + Jacobian Frobenius, weight
  ``--rnode`` each): NFE per training step.

Timing runs one torch thread per process (batch 512 in 2-D), so two runs
can share the 2-core machine; numpy's global RNG is seeded too (normflows
draws its roulette series lengths from it).

    python benchmarks/free_form_2d.py                                   # the full run (slow)
    python benchmarks/free_form_2d.py --datasets 8gaussians --steps 300  # quick
    python benchmarks/free_form_2d.py --combine a b --results both      # one table from runs made apart
    python benchmarks/free_form_2d.py --timing --models pyroflows-resflow normflows-residual  # ms/step, alternated
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import pyro.distributions as dist
import torch
from common import RESULTS, alternated_ms_per_step, save, table

import pyroflows
from pyroflows.datasets import TOY_2D, toy_2d
from pyroflows.transforms import ContinuousFlow, LogDetEstimator, Residual

RNODE_WEIGHT = 0.05


def _pyroflows_model(flow):
    base = dist.Normal(torch.zeros(2), torch.ones(2)).to_event(1)
    return flow, pyroflows.FlowDistribution(base, flow, validate_args=False).log_prob


def build(name: str, blocks: int):
    if name == "pyroflows-resflow":
        estimator = LogDetEstimator("roulette", p=0.5, num_exact_terms=2)
        return _pyroflows_model(pyroflows.flows.resflow(2, num_transforms=blocks, log_det=estimator))
    if name == "normflows-residual":
        import normflows as nf

        layers = []
        for _ in range(blocks):
            net = nf.nets.LipschitzMLP([2, 64, 64, 2], init_zeros=True, lipschitz_const=0.97)
            layers += [nf.flows.Residual(net, reduce_memory=True, n_exact_terms=2), nf.flows.ActNorm(2)]
        model = nf.NormalizingFlow(nf.distributions.DiagGaussian(2, trainable=False), layers)
        return model, model.log_prob
    if name in ("pyroflows-ffjord", "pyroflows-ffjord-rnode"):
        return _pyroflows_model(pyroflows.flows.ffjord(2, regularize=name.endswith("rnode"), trace="exact"))
    if name == "zuko-cnf":
        import zuko

        flow = zuko.flows.CNF(2, hidden_features=(64, 64))
        return flow, lambda x: flow().log_prob(x)
    raise ValueError(f"unknown model {name!r}")


def _ffjord_layers(module):
    return [m for m in module.modules() if isinstance(m, ContinuousFlow)]


def _exact_eval(module):
    """Exact log-dets for evaluation (2-D): pyroflows and normflows residual blocks."""
    for m in module.modules():
        if isinstance(m, Residual):
            m.estimator = LogDetEstimator("exact")
        if hasattr(m, "iresblock"):
            m.iresblock.brute_force = True


def run(name: str, dataset: str, steps: int, blocks: int, rnode: tuple[float, float], seed: int) -> dict:
    """One training run; ``rnode`` weighs the (kinetic, Jacobian Frobenius) penalties."""
    torch.manual_seed(seed)
    np.random.seed(seed)
    train, test = toy_2d(dataset, 20_000, seed=seed), toy_2d(dataset, 5_000, seed=seed + 1)
    module, log_prob = build(name, blocks)
    with torch.no_grad():  # data-dependent ActNorm initialisation
        log_prob(train[:512])
    opt = torch.optim.Adam(module.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(seed)
    layers = _ffjord_layers(module)  # peers expose no NFE
    nfe, late_nfe, late_from, start = 0, 0, steps - steps // 10, time.perf_counter()
    for step in range(steps):
        batch = train[torch.randint(len(train), (512,), generator=gen)]
        loss = -log_prob(batch).mean()
        for m in layers:
            reg = m.last_regularization  # empty unless the flow integrates the penalties
            if reg:
                loss = loss + rnode[0] * reg["kinetic"].mean() + rnode[1] * reg["jacobian_frobenius"].mean()
        step_nfe = sum(m.last_nfe for m in layers)
        nfe += step_nfe
        late_nfe += step_nfe if step >= late_from else 0
        opt.zero_grad()
        loss.backward()
        opt.step()
    ms = 1000 * (time.perf_counter() - start) / steps
    _exact_eval(module)
    test_nfe, log_probs = [], []
    with torch.no_grad():
        for chunk in test.split(1000):
            log_probs.append(log_prob(chunk))
            test_nfe.append(sum(m.last_nfe for m in layers))
    nll = -torch.cat(log_probs).mean().item()
    cnf = bool(layers)
    return {
        "dataset": dataset,
        "model": name,
        "seed": seed,
        "test_nll": nll,
        "ms_per_step": ms,
        "nfe_per_step": nfe / steps if cnf else None,
        "nfe_last_tenth": late_nfe / (steps - late_from) if cnf else None,
        "nfe_test": statistics.mean(test_nfe) if cnf else None,
    }


def timing(models: list[str], dataset: str, blocks: int) -> list[dict]:
    """ms/step of each model's training step, alternated (:func:`common.alternated_ms_per_step`)."""
    torch.manual_seed(0)
    np.random.seed(0)
    train = toy_2d(dataset, 20_000, seed=0)
    gen = torch.Generator().manual_seed(0)

    def step_fn(name):
        module, log_prob = build(name, blocks)
        opt = torch.optim.Adam(module.parameters(), lr=1e-3)

        def step():
            loss = -log_prob(train[torch.randint(len(train), (512,), generator=gen)]).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()

        return step

    medians = alternated_ms_per_step({name: step_fn(name) for name in models})
    return [{"dataset": dataset, "model": name, "ms_per_step": ms} for name, ms in medians.items()]


# NFE per training step over all steps and over the last tenth, and per test-evaluation solve
NFE_RATIOS = {"nfe_per_step": "nfe_ratio", "nfe_last_tenth": "nfe_ratio_last_tenth", "nfe_test": "nfe_ratio_test"}
PAIRS = {  # model -> the reference it is compared with
    "pyroflows-resflow": "normflows-residual",
    "pyroflows-ffjord": "zuko-cnf",
    "pyroflows-ffjord-rnode": "pyroflows-ffjord",
}


def summarise(rows: list[dict]) -> list[dict]:
    """Mean over seeds per (data set, model), with each pyroflows model against its reference."""
    keys = list(dict.fromkeys((r["dataset"], r["model"]) for r in rows))
    out = []
    for dataset, model in keys:
        group = [r for r in rows if (r["dataset"], r["model"]) == (dataset, model)]
        row = {"dataset": dataset, "model": model, "seeds": len(group)}
        for field in ("test_nll", "ms_per_step", *NFE_RATIOS):
            values = [r[field] for r in group if r.get(field) is not None]
            row[field] = statistics.mean(values) if values else None
        out.append(row)
    for row in out:
        ref = next((r for r in out if r["dataset"] == row["dataset"] and r["model"] == PAIRS.get(row["model"])), None)
        if ref is not None:
            row["vs"] = ref["model"]
            row["nll_minus_ref"] = row["test_nll"] - ref["test_nll"]
            row["time_ratio"] = row["ms_per_step"] / ref["ms_per_step"]
            for field, ratio in NFE_RATIOS.items():
                if row.get(field) and ref.get(field):
                    row[ratio] = row[field] / ref[field]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=list(TOY_2D))
    parser.add_argument(
        "--models",
        nargs="+",
        default=["pyroflows-resflow", "normflows-residual", "pyroflows-ffjord", "pyroflows-ffjord-rnode", "zuko-cnf"],
    )
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--blocks", type=int, default=8)
    parser.add_argument("--rnode", type=float, default=RNODE_WEIGHT, help="weight of both RNODE penalties")
    parser.add_argument("--rnode-kinetic", type=float, default=None, help="kinetic weight (default --rnode)")
    parser.add_argument("--rnode-jacobian", type=float, default=None, help="Jacobian weight (default --rnode)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--results",
        default=None,
        help="JSON name under results/ (default: free_form_2d, or free_form_2d_timing with --timing)",
    )
    parser.add_argument("--combine", nargs="+", default=[], help="results files to merge instead of running")
    parser.add_argument("--timing", action="store_true", help="only time the models' training steps, alternated")
    args = parser.parse_args()
    args.results = args.results or ("free_form_2d_timing" if args.timing else "free_form_2d")
    torch.set_num_threads(args.threads)
    if args.timing:
        rows = [row for dataset in args.datasets for row in timing(args.models, dataset, args.blocks)]
        for row in rows:
            ref = next(
                (r for r in rows if r["dataset"] == row["dataset"] and r["model"] == PAIRS.get(row["model"])), None
            )
            if ref is not None:
                row["time_ratio"] = row["ms_per_step"] / ref["ms_per_step"]
        print(table(rows, ["dataset", "model", "ms_per_step", "time_ratio"]))
        print("wrote", save(args.results, {"args": vars(args), "rows": rows}))
        return
    rows = [row for name in args.combine for row in json.loads((RESULTS / f"{name}.json").read_text())["rows"]]
    weights = tuple(args.rnode if w is None else w for w in (args.rnode_kinetic, args.rnode_jacobian))
    for dataset in args.datasets if not args.combine else ():
        for name in args.models:
            for seed in args.seeds:
                rows.append(run(name, dataset, args.steps, args.blocks, weights, seed))
                print(rows[-1], flush=True)
    summary = summarise(rows)
    columns = ["dataset", "model", "seeds", "test_nll", "ms_per_step", *NFE_RATIOS, "vs"]
    print(table(summary, [*columns, "nll_minus_ref", "time_ratio", *NFE_RATIOS.values()]))
    print("wrote", save(args.results, {"args": vars(args), "summary": summary, "rows": rows}))


if __name__ == "__main__":
    main()
