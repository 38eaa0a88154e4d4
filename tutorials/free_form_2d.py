"""Tutorial: free-form flows on a 2-D density with disconnected modes.

Fits a neural spline flow, a residual flow and FFJORD to the same data by
maximum likelihood, prints each one's test NLL (nats) and writes a PNG with
the data and the three learned densities::

    python tutorials/free_form_2d.py --dataset 8gaussians --steps 1000 --out free_form_2d.png
"""

from __future__ import annotations

import argparse

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pyro.distributions as dist  # noqa: E402
import torch  # noqa: E402

import pyroflows  # noqa: E402
from pyroflows.datasets import TOY_2D, toy_2d  # noqa: E402
from pyroflows.transforms import LogDetEstimator, Residual  # noqa: E402

FLOWS = {
    "NSF": lambda: pyroflows.nsf(2, num_transforms=5, hidden_dims=(64, 64)),
    "residual flow": lambda: pyroflows.flows.resflow(2, num_transforms=6, log_det=LogDetEstimator("roulette")),
    "FFJORD": lambda: pyroflows.flows.ffjord(2, hidden_dims=(64, 64), trace="exact"),
}


def train(flow, data: torch.Tensor, steps: int, seed: int):
    base = dist.Normal(torch.zeros(2), torch.ones(2)).to_event(1)
    model = pyroflows.FlowDistribution(base, flow)
    with torch.no_grad():  # data-dependent ActNorm initialisation where there is one
        model.log_prob(data[:512])
    opt = torch.optim.Adam(flow.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        loss = -model.log_prob(data[torch.randint(len(data), (512,), generator=gen)]).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    for m in flow.modules():  # exact log-dets to evaluate (2-D)
        if isinstance(m, Residual):
            m.estimator = LogDetEstimator("exact")
    return model


@torch.no_grad()
def density_grid(model, n: int = 80, lim: float = 4.5):
    axis = torch.linspace(-lim, lim, n)
    grid = torch.stack(torch.meshgrid(axis, axis, indexing="xy"), -1).reshape(-1, 2)
    return model.log_prob(grid).exp().reshape(n, n), lim


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="8gaussians", choices=list(TOY_2D))
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="free_form_2d.png")
    args = parser.parse_args(argv)
    if args.steps < 1:
        parser.error(f"--steps must be positive, got {args.steps}")
    torch.manual_seed(args.seed)
    train_x, test_x = toy_2d(args.dataset, 20_000, seed=args.seed), toy_2d(args.dataset, 2_000, seed=args.seed + 1)
    fig, axes = plt.subplots(1, len(FLOWS) + 1, figsize=(4 * (len(FLOWS) + 1), 4))
    axes[0].hist2d(train_x[:, 0].numpy(), train_x[:, 1].numpy(), bins=100, range=[[-4.5, 4.5]] * 2)
    axes[0].set_title(f"data: {args.dataset}")
    results = {}
    for ax, (name, make) in zip(axes[1:], FLOWS.items(), strict=True):
        torch.manual_seed(args.seed)
        model = train(make(), train_x, args.steps, args.seed)
        with torch.no_grad():
            results[name] = -model.log_prob(test_x).mean().item()
        density, lim = density_grid(model)
        ax.imshow(density.numpy(), origin="lower", extent=[-lim, lim, -lim, lim])
        ax.set_title(f"{name}: test NLL {results[name]:.3f}")
        print(f"{name:<14} test NLL {results[name]:.3f} nats", flush=True)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(args.out, dpi=100)
    print(f"wrote {args.out}")
    return results


if __name__ == "__main__":
    main()
