"""64-D density estimation on scikit-learn's digits: test NLL at equal budget.

Values 0..16 get uniform dequantisation and are scaled to about unit range;
the NLL is reported in nats per image of the continuous (dequantised, scaled)
data. MAF, NSF (coupling) and RealNVP with 5 transforms and hidden 64x2 each,
Adam 1e-3, batch 256, the same number of steps, for pyroflows, zuko and nflows.

    python benchmarks/digits.py
    python benchmarks/digits.py --steps 200   # quick
"""

from __future__ import annotations

import argparse

import torch
from common import nll, save, table, train
from peers import build
from sklearn.datasets import load_digits


def digits(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Dequantised, standardised digits: 1,437 train and 360 test images."""
    x = torch.tensor(load_digits().data, dtype=torch.float32)
    gen = torch.Generator().manual_seed(seed)
    x = (x + torch.rand(x.shape, generator=gen)) / 17.0  # uniform dequantisation into [0, 1)
    x = (x - 0.5) * 4.0  # about unit scale, inside the spline box
    perm = torch.randperm(len(x), generator=gen)
    split = int(0.8 * len(x))
    return x[perm[:split]], x[perm[split:]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--kinds", nargs="+", default=["maf", "nsf", "realnvp"])
    parser.add_argument("--libraries", nargs="+", default=["pyroflows", "zuko", "nflows"])
    args = parser.parse_args()
    train_x, test_x = digits()
    rows = []
    for kind in args.kinds:
        for library in args.libraries:
            torch.manual_seed(0)
            model = build(library, kind, 64)
            params = sum(p.numel() for p in model.module.parameters())
            ms = train(model, train_x, args.steps, 256, 1e-3, 0)
            rows.append(
                {"flow": kind, "library": library, "params": params, "test_nll": nll(model, test_x), "ms_per_step": ms}
            )
            print(rows[-1], flush=True)
    print(table(rows, ["flow", "library", "params", "test_nll", "ms_per_step"]))
    print("wrote", save("digits", {"args": vars(args), "rows": rows}))


if __name__ == "__main__":
    main()
