"""Residual flows: Jacobian products by the network's linearization vs through autograd.

The same models, weights and data, in one process, alternated; the "autograd"
copy wraps each block's network in a module without ``linearize``, so the
estimators and the implicit gradient fall back to autograd (what every block
did before ``linearize``):

* ``density_2d``: 8 dense blocks 64x64 with ActNorm, roulette log-det, batch 512
  of 2spirals, data -> base (the ``free_form_2d`` residual-flow step);
* ``sampling_10d``: 2 dense blocks 40x40, exact log-det, 256 draws base -> data
  through the fixed point and its implicit gradient (the VI guide's direction);
* ``image_8x8``: ``resflow_image((1, 8, 8), hidden_channels=32)``, batch 64.

    python benchmarks/residual_jacobians.py
"""

from __future__ import annotations

import argparse

import pyro.distributions as dist
import torch
from common import alternated_ms_per_step, save, table

import pyroflows
from pyroflows.datasets import toy_2d
from pyroflows.images.factories import resflow_image
from pyroflows.transforms import LogDetEstimator, Residual


class Opaque(torch.nn.Module):
    """The block's network without ``linearize``."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.inner = net

    def forward(self, x, context=None):
        return self.inner(x, context)


def hide_linearize(module: torch.nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, Residual):
            m.net = Opaque(m.net)


def density_2d():
    flow = pyroflows.flows.resflow(2, num_transforms=8, log_det=LogDetEstimator("roulette", p=0.5, num_exact_terms=2))
    base = dist.Normal(torch.zeros(2), torch.ones(2)).to_event(1)
    log_prob = pyroflows.FlowDistribution(base, flow, validate_args=False).log_prob
    data = toy_2d("2spirals", 20_000, seed=0)
    with torch.no_grad():
        log_prob(data[:512])  # ActNorm's data-dependent initialisation
    return flow, lambda: -log_prob(data[torch.randint(len(data), (512,))]).mean()


def sampling_10d():
    flow = pyroflows.flows.resflow(
        10, num_transforms=2, hidden_dims=(40, 40), log_det=LogDetEstimator("exact"), actnorm=False
    )

    def loss():
        x, log_det = torch.randn(256, 10), 0.0
        for part in flow.parts:
            y, ld = part.forward_and_log_det(x)
            x, log_det = y, log_det + ld
        return (0.5 * x.square().sum(-1) - log_det).mean()

    return flow, loss


def image_8x8():
    flow = resflow_image((1, 8, 8), hidden_channels=32)
    x = torch.rand(64, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    return flow, lambda: -flow.log_prob(x).mean()


TASKS = {"density_2d": density_2d, "sampling_10d": sampling_10d, "image_8x8": image_8x8}


def step_fn(task: str, autograd: bool):
    torch.manual_seed(0)
    module, loss = TASKS[task]()
    if autograd:
        hide_linearize(module)
    opt = torch.optim.Adam(module.parameters(), lr=1e-3)

    def step():
        value = loss()
        opt.zero_grad()
        value.backward()
        opt.step()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    parser.add_argument("--steps", type=int, default=10, help="steps per round (5 timed rounds)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--results", default="residual_jacobians")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for task in args.tasks:
        ms = alternated_ms_per_step(
            {"linearized": step_fn(task, False), "autograd": step_fn(task, True)}, steps=args.steps
        )
        rows.append(
            {
                "task": task,
                "linearized_ms": ms["linearized"],
                "autograd_ms": ms["autograd"],
                "speedup": ms["autograd"] / ms["linearized"],
            }
        )
        print(rows[-1], flush=True)
    print(table(rows, ["task", "linearized_ms", "autograd_ms", "speedup"]))
    print("wrote", save(args.results, {"args": vars(args), "rows": rows}))


if __name__ == "__main__":
    main()
