"""Run by tests/test_data_parallel.py under torchrun: a few data-parallel SVI
steps (gloo on CPU), each process fitting its shard of the rows."""

import sys

import pyro
import pyro.distributions as dist
import torch
import torch.distributed as dist_
from pyro.infer.autoguide import AutoNormal

from pyroflows.distributed import setup_distributed, shard
from pyroflows.infer import AutoFlow, fit


def regression(x, y):
    a = pyro.sample("a", dist.Normal(0.0, 5.0))
    b = pyro.sample("b", dist.Normal(0.0, 5.0))
    sigma = pyro.sample("sigma", dist.LogNormal(0.0, 1.0))
    with pyro.plate("rows", len(x)):
        pyro.sample("y", dist.Normal(a + b * x, sigma), obs=y)


def row_effects(x, y):
    a = pyro.sample("a", dist.Normal(0.0, 5.0))
    with pyro.plate("rows", len(x)):
        effect = pyro.sample("effect", dist.Normal(0.0, 1.0))  # a latent per row: cannot be sharded
        pyro.sample("y", dist.Normal(a + effect * x, 1.0), obs=y)


def refused(x, y) -> str:
    """The error of a data-parallel fit whose sharded plate holds latents."""
    try:
        fit(row_effects, AutoNormal(row_effects), x, y, num_steps=2, progress=False, data_plate="rows")
    except ValueError as err:
        return str(err)
    return ""


def hand_written(x, y):
    for name in ("a", "b"):
        loc = pyro.param(f"{name}_loc", torch.tensor(0.0))
        scale = pyro.param(f"{name}_scale", torch.tensor(1.0), constraint=dist.constraints.positive)
        pyro.sample(name, dist.Normal(loc, scale))
    pyro.sample("sigma", dist.LogNormal(pyro.param("s_loc", torch.tensor(0.0)), 0.3))


GUIDES = {
    "AutoNormal": lambda: AutoNormal(regression),
    "AutoFlow": lambda: AutoFlow(regression, warm_start=None),
    "hand-written": lambda: hand_written,
}


def data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, generator=g)
    return x, 1.0 + 2.0 * x + 0.5 * torch.randn(64, generator=g)


def run(name: str, x, y, data_plate=None) -> dict:
    """Set the guide up (as data-parallel fit does first), then 6 steps from seed 0."""
    pyro.clear_param_store()
    pyro.set_rng_seed(1)
    guide = GUIDES[name]()
    with torch.no_grad():
        guide(x, y)
    losses = fit(regression, guide, x, y, num_steps=6, lr=0.01, num_particles=4, seed=0, stop=None,
                 progress=False, data_plate=data_plate)  # fmt: skip
    params = {k: v.detach().clone() for k, v in pyro.get_param_store().named_parameters()}
    return {"losses": torch.as_tensor(losses), "params": params}


def with_defaults(x, y) -> dict:
    """fit's defaults (timed particles, stop rule) under torchrun: every process must take the same steps."""
    pyro.clear_param_store()
    losses = fit(regression, AutoNormal(regression), x, y, num_steps=1000, lr=0.05, seed=0, progress=False,
                 data_plate="rows")  # fmt: skip
    params = torch.cat([v.detach().reshape(-1) for _, v in sorted(pyro.get_param_store().named_parameters())])
    gathered = [torch.zeros_like(params) for _ in range(dist_.get_world_size())]
    dist_.all_gather(gathered, params)
    return {"steps": len(losses), "params": torch.stack(gathered)}


def main(out: str) -> None:
    rank, world = setup_distributed()
    x, y = shard(*data())
    results = {name: run(name, x, y, data_plate="rows") for name in GUIDES}
    defaults = with_defaults(x, y)
    if rank == 0:
        torch.save({"world": world, "results": results, "refused": refused(x, y), "defaults": defaults}, out)
    dist_.barrier()
    dist_.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
