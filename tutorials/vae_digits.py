"""Tutorial: a VAE on scikit-learn's digits with a flow posterior and a flow prior.

Each 8x8 image has pixels in 0..16, modelled as Binomial(16, p) from a decoder
of a latent z. Three VAEs train for the same number of steps with the same
networks and fit loop:

* ``gaussian``: N(0, I) prior, diagonal Gaussian amortized posterior;
* ``flow posterior``: N(0, I) prior, Gaussian + conditional spline flow posterior;
* ``flow posterior + prior``: the same posterior and a learnable FlowPrior.

It prints the test ELBO (nats per image, higher is better) of each::

    python tutorials/vae_digits.py --steps 3000
"""

from __future__ import annotations

import argparse

import pyro
import pyro.distributions as dist
import torch
from pyro.infer import Trace_ELBO
from pyro.nn import PyroModule
from sklearn.datasets import load_digits
from torch import nn

from pyroflows.infer import AmortizedFlow, FlowPrior, fit

PIXELS, LEVELS = 64, 16


def digits(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Train / test split (1500 / 297) of the digit images as float counts 0..16."""
    x = torch.tensor(load_digits().data, dtype=torch.float32)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    return x[perm[:1500]], x[perm[1500:]]


class VAE(PyroModule):
    """Decoder p(x | z) with a N(0, I) or a learnable flow prior p(z)."""

    def __init__(self, latent_dim: int, hidden: int, flow_prior: bool) -> None:
        super().__init__()
        self.latent_dim = latent_dim
        self.decoder = nn.Sequential(nn.Linear(latent_dim, hidden), nn.ReLU(), nn.Linear(hidden, PIXELS))
        self.prior = FlowPrior(latent_dim, num_transforms=2, hidden_dims=(hidden // 2,)) if flow_prior else None

    def forward(self, x: torch.Tensor, batch_size: int) -> None:
        if self.prior is not None:
            prior = self.prior()
        else:
            prior = dist.Normal(torch.zeros(self.latent_dim), 1.0).to_event(1)
        with pyro.plate("images", len(x), subsample_size=batch_size) as idx:
            z = pyro.sample("z", prior)
            logits = self.decoder(z)
            pyro.sample("x", dist.Binomial(LEVELS, logits=logits).to_event(1), obs=x[idx])


def make(kind: str, latent_dim: int, hidden: int, n: int, batch_size: int):
    flow_prior = kind == "flow posterior + prior"
    num_transforms = 0 if kind == "gaussian" else 2
    model = VAE(latent_dim, hidden, flow_prior)
    encoder = nn.Sequential(nn.Linear(PIXELS, hidden), nn.ReLU())
    guide = AmortizedFlow(
        "z",
        latent_dim,
        ("images", n, batch_size),
        lambda x, batch_size: x / LEVELS,
        encoder,
        context_dim=hidden,
        num_transforms=num_transforms,
        hidden_dims=(hidden // 2,),
    )
    return model, guide


@torch.no_grad()
def test_elbo(model, guide, x: torch.Tensor, num_particles: int = 20) -> float:
    """ELBO per image on ``x`` (all images at once, ``num_particles`` draws)."""
    elbo = Trace_ELBO(num_particles=num_particles, vectorize_particles=True, max_plate_nesting=1)
    model.eval()
    guide.plate_args = ("images", len(x), len(x))
    value = -elbo.loss(model, guide, x, len(x)) / len(x)
    return value


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--latent-dim", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.steps < 1:
        parser.error(f"--steps must be positive, got {args.steps}")
    train, test = digits(args.seed)
    results = {}
    for kind in ("gaussian", "flow posterior", "flow posterior + prior"):
        pyro.clear_param_store()
        torch.manual_seed(args.seed)
        model, guide = make(kind, args.latent_dim, args.hidden, len(train), args.batch_size)
        fit(
            model,
            guide,
            train,
            args.batch_size,
            num_steps=args.steps,
            lr=3e-3,
            num_particles=1,
            stop=None,  # exactly --steps steps over minibatches
            seed=args.seed,
            progress=False,
        )
        results[kind] = test_elbo(model, guide, test)
        print(f"{kind:<24} test ELBO {results[kind]:9.2f} nats/image", flush=True)
    return results


if __name__ == "__main__":
    main()
