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

    python benchmarks/free_form_2d.py                                   # the full run (slow)
    python benchmarks/free_form_2d.py --datasets 8gaussians --steps 300  # quick
"""

from __future__ import annotations

import argparse
import time

import pyro.distributions as dist
import torch
from common import save, table

import pyroflows
from pyroflows.datasets import TOY_2D, toy_2d
from pyroflows.transforms import ContinuousFlow, LogDetEstimator, Residual


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


def run(name: str, dataset: str, steps: int, blocks: int, rnode: float, seed: int) -> dict:
    torch.manual_seed(seed)
    train, test = toy_2d(dataset, 20_000, seed=seed), toy_2d(dataset, 5_000, seed=seed + 1)
    module, log_prob = build(name, blocks)
    with torch.no_grad():  # data-dependent ActNorm initialisation
        log_prob(train[:512])
    opt = torch.optim.Adam(module.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(seed)
    nfe, start = 0, time.perf_counter()
    for _ in range(steps):
        batch = train[torch.randint(len(train), (512,), generator=gen)]
        loss = -log_prob(batch).mean()
        layers = _ffjord_layers(module)
        if rnode and layers:
            reg = sum(sum(v.mean() for v in m.last_regularization.values()) for m in layers)
            loss = loss + rnode * reg
        nfe += sum(m.last_nfe for m in layers)
        opt.zero_grad()
        loss.backward()
        opt.step()
    ms = 1000 * (time.perf_counter() - start) / steps
    _exact_eval(module)
    with torch.no_grad():
        nll = -torch.cat([log_prob(chunk) for chunk in test.split(1000)]).mean().item()
    nfe_per_step = nfe / steps if _ffjord_layers(module) else None  # peers do not expose their NFE
    return {"dataset": dataset, "model": name, "test_nll": nll, "ms_per_step": ms, "nfe_per_step": nfe_per_step}


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
    parser.add_argument("--rnode", type=float, default=0.01)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--results", default="free_form_2d")
    args = parser.parse_args()
    rows = []
    for dataset in args.datasets:
        for name in args.models:
            rows.append(run(name, dataset, args.steps, args.blocks, args.rnode, args.seed))
            print(rows[-1], flush=True)
    print(table(rows, ["dataset", "model", "test_nll", "ms_per_step", "nfe_per_step"]))
    save(args.results, {"args": vars(args), "rows": rows})


if __name__ == "__main__":
    main()
