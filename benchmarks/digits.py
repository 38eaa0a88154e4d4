"""64-D density estimation on scikit-learn's digits: test NLL at equal budget.

Values 0..16 get uniform dequantisation and are scaled to about unit range;
the NLL is reported in nats per image of the continuous (dequantised, scaled)
data. MAF, NSF (coupling) and RealNVP with 5 transforms and hidden 64x2 each,
Adam 1e-3, batch 256, the same number of steps, for pyroflows, zuko and nflows.
With 1,150 training images every model overfits well inside the budget, so
each run keeps the parameters with the best NLL on a held-out validation split
(checked every 100 steps) and reports the test NLL there.

    python benchmarks/digits.py
    python benchmarks/digits.py --steps 200   # quick
"""

from __future__ import annotations

import argparse
import copy

import torch
from common import nll, save, table, train
from peers import build
from sklearn.datasets import load_digits


def digits(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Dequantised, scaled digits: 1,150 train, 287 validation and 360 test images."""
    x = torch.tensor(load_digits().data, dtype=torch.float32)
    gen = torch.Generator().manual_seed(seed)
    x = (x + torch.rand(x.shape, generator=gen)) / 17.0  # uniform dequantisation into [0, 1)
    x = (x - 0.5) * 4.0  # about unit scale, inside the spline box
    perm = torch.randperm(len(x), generator=gen)
    train, valid = int(0.64 * len(x)), int(0.8 * len(x))
    return x[perm[:train]], x[perm[train:valid]], x[perm[valid:]]


def fit_early_stopped(model, train_x, valid_x, steps: int, check_every: int = 100) -> tuple[float, int]:
    """Train in chunks, keep the best-validation parameters; returns ms/step and the best step."""
    best, best_state, best_step, total_ms = float("inf"), None, 0, 0.0
    for chunk in range(steps // check_every):
        total_ms += train(model, train_x, check_every, 256, 1e-3, chunk, warmup=0) * check_every
        valid = nll(model, valid_x)
        if valid < best:
            best, best_step = valid, (chunk + 1) * check_every
            best_state = copy.deepcopy(model.module.state_dict())
    model.module.load_state_dict(best_state)
    return total_ms / steps, best_step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--kinds", nargs="+", default=["maf", "nsf", "realnvp"])
    parser.add_argument("--libraries", nargs="+", default=["pyroflows", "zuko", "nflows"])
    args = parser.parse_args()
    torch.set_num_threads(1)  # the stored table's setting (the runs' trajectories depend on it)
    train_x, valid_x, test_x = digits()
    rows = []
    for kind in args.kinds:
        for library in args.libraries:
            torch.manual_seed(0)
            model = build(library, kind, 64)
            params = sum(p.numel() for p in model.module.parameters())
            ms, best_step = fit_early_stopped(model, train_x, valid_x, args.steps)
            row = {"flow": kind, "library": library, "params": params, "best_step": best_step}
            rows.append({**row, "test_nll": nll(model, test_x), "ms_per_step": ms})
            print(rows[-1], flush=True)
    print(table(rows, ["flow", "library", "params", "best_step", "test_nll", "ms_per_step"]))
    print("wrote", save("digits", {"args": vars(args), "rows": rows}))


if __name__ == "__main__":
    main()
