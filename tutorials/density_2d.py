"""Tutorial: fit a neural spline flow to a 2-D toy density.

Trains ``pyroflows.nsf`` by maximum likelihood, prints the test NLL (nats) and
writes a PNG with the data, the learned density and samples from the flow::

    python tutorials/density_2d.py --dataset moons --steps 2000 --out density_2d.png
"""

from __future__ import annotations

import argparse
import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pyro.distributions as dist  # noqa: E402
import torch  # noqa: E402
from tqdm.auto import trange  # noqa: E402

import pyroflows  # noqa: E402
from pyroflows.datasets import TOY_2D, toy_2d  # noqa: E402


def fit(dataset: str = "moons", steps: int = 2000, batch_size: int = 512, lr: float = 1e-3, seed: int = 0):
    """Train the flow; returns the distribution, the test NLL and the data."""
    torch.manual_seed(seed)
    train_x, test_x = toy_2d(dataset, 20_000, seed=seed), toy_2d(dataset, 5_000, seed=seed + 1)
    flow = pyroflows.nsf(2, num_transforms=5, hidden_dims=(64, 64), count_bins=8, bound=5.0)
    base = dist.Normal(torch.zeros(2), torch.ones(2)).to_event(1)
    model = pyroflows.FlowDistribution(base, flow)
    optimizer = torch.optim.Adam(flow.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    for step in (bar := trange(steps, desc=f"nsf on {dataset}", mininterval=1.0)):
        batch = train_x[torch.randint(len(train_x), (batch_size,), generator=gen)]
        loss = -model.log_prob(batch).mean()
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite training loss {loss.item()} at step {step}")
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 100 == 0:
            bar.set_postfix(nll=f"{loss.item():.3f}")
    with torch.no_grad():
        test_nll = -model.log_prob(test_x).mean().item()
    return model, test_nll, train_x


def plot(model, data: torch.Tensor, path: str, title: str) -> None:
    """Data, learned density and flow samples side by side."""
    lim = 4.5
    grid = torch.linspace(-lim, lim, 200)
    xx, yy = torch.meshgrid(grid, grid, indexing="xy")
    with torch.no_grad():
        density = model.log_prob(torch.stack([xx, yy], -1).reshape(-1, 2)).exp().reshape(200, 200)
        samples = model.sample((5000,))
    fig, axes = plt.subplots(1, 3, figsize=(12, 4))
    axes[0].hist2d(*data[:20000].T.numpy(), bins=200, range=[[-lim, lim]] * 2, cmap="magma")
    axes[0].set_title("data")
    axes[1].imshow(density.numpy(), extent=(-lim, lim, -lim, lim), origin="lower", cmap="magma")
    axes[1].set_title("flow density")
    axes[2].hist2d(*samples.T.numpy(), bins=200, range=[[-lim, lim]] * 2, cmap="magma")
    axes[2].set_title("flow samples")
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> float:
    parser = argparse.ArgumentParser(description="Fit an NSF to a 2-D toy density.")
    parser.add_argument("--dataset", choices=TOY_2D, default="moons")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--out", default="density_2d.png")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.steps < 1:
        parser.error(f"--steps must be positive, got {args.steps}")
    model, test_nll, data = fit(args.dataset, args.steps, seed=args.seed)
    print(f"test NLL on {args.dataset}: {test_nll:.3f} nats ({test_nll / math.log(2):.3f} bits)")
    plot(model, data, args.out, f"{args.dataset}: test NLL {test_nll:.3f} nats")
    print(f"wrote {args.out}")
    return test_nll


if __name__ == "__main__":
    main()
