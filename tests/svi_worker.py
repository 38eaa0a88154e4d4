"""Run by tests/test_data_parallel.py under torchrun: a few data-parallel SVI
steps (gloo on CPU), each process fitting its shard of the rows."""

import sys
import time

import pyro
import pyro.distributions as dist
import torch
import torch.distributed as dist_
from pyro.infer.autoguide import AutoNormal

from pyroflows.distributed import setup_distributed, shard
from pyroflows.infer import AutoFlow, fit
from pyroflows.training import NonFiniteLossError


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
    pyro.clear_param_store()
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
    """fit's and AutoFlow's defaults (warm start, timed particles, stop rule) under torchrun: every process
    must take the same steps."""
    pyro.clear_param_store()
    losses = fit(regression, AutoFlow(regression), x, y, num_steps=1000, lr=0.05, seed=0, progress=False,
                 data_plate="rows")  # fmt: skip
    params = torch.cat([v.detach().reshape(-1) for _, v in sorted(pyro.get_param_store().named_parameters())])
    gathered = [torch.zeros_like(params) for _ in range(dist_.get_world_size())]
    dist_.all_gather(gathered, params)
    return {"steps": len(losses), "params": torch.stack(gathered)}


GROUPS, PER_GROUP = 40, 5


def grouped_data(groups: int = GROUPS) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    effects = 1.0 + 0.5 * torch.randn(groups, generator=g)
    return effects[:, None] + 0.3 * torch.randn(groups, PER_GROUP, generator=g)


def random_effects(y, members, groups=GROUPS):
    """One latent per group, the groups plate numbered across processes."""
    mu = pyro.sample("mu", dist.Normal(0.0, 5.0))
    sd = pyro.sample("sd", dist.HalfNormal(2.0))
    with pyro.plate("groups", groups, subsample=members):
        effect = pyro.sample("effect", dist.Normal(mu, sd))
        pyro.sample("y", dist.Normal(effect.unsqueeze(-1), 0.3).to_event(1), obs=y)


def groups_plate(y, members, groups=GROUPS):
    return pyro.plate("groups", groups, subsample=members)


def plate_aware(members) -> dict:
    """A plate-aware AutoFlow fitted on these members' groups; the globals' guide mean and sd."""
    pyro.clear_param_store()
    y = grouped_data()[members]
    guide = AutoFlow(random_effects, create_plates=groups_plate)
    fit(random_effects, guide, y, members, num_steps=600, lr=0.01, seed=0, stop=None, num_particles=8,
        progress=False, data_plate="groups")  # fmt: skip
    assert "form=structured" in repr(guide), repr(guide)
    pyro.set_rng_seed(5)
    with torch.no_grad():
        draws = guide.sample_posterior(4000, y, members)
    return {name: (draws[name].mean().item(), draws[name].std().item()) for name in ("mu", "sd")}


def mismatched(members) -> str:
    """The error of a numbered plate whose guide draws its own members (no create_plates)."""
    pyro.clear_param_store()
    y = grouped_data()[members]
    try:
        fit(random_effects, AutoNormal(random_effects), y, members, num_steps=2, progress=False, data_plate="groups")
    except ValueError as err:
        return str(err)
    return ""


class Interrupted(Exception):
    """A run killed mid-way (the model raises at the same call on every process)."""


ODD_GROUPS = 41  # shards of 20 and 21 groups: the processes draw differently many random numbers


def checkpointed(path: str, die_at: int | None = None) -> dict:
    """AutoNormal over ODD_GROUPS groups numbered across the processes: 12 fixed-schedule steps, checkpointed
    every 5; with ``die_at`` the model raises at that call. The losses, this process's parameters, the calls."""
    pyro.clear_param_store()
    members = shard(torch.arange(ODD_GROUPS))
    calls = [0]

    def model(y, members, groups):
        calls[0] += 1
        if calls[0] == die_at:
            raise Interrupted
        random_effects(y, members, groups)

    options = {"num_steps": 12, "lr": 0.01, "num_particles": 4, "seed": 0, "stop": None, "progress": False}
    guide = AutoNormal(model, create_plates=groups_plate)
    y = grouped_data(ODD_GROUPS)[members]
    try:
        losses = fit(model, guide, y, members, groups=ODD_GROUPS, data_plate="groups", checkpoint=path,
                     checkpoint_every=5, **options)  # fmt: skip
    except Interrupted:
        return {"calls": calls[0]}
    params = {k: v.detach().clone() for k, v in pyro.get_param_store().named_parameters()}
    return {"losses": torch.as_tensor(losses), "params": params, "calls": calls[0]}


def resumed_equals_straight(out: str) -> bool:
    """A data-parallel fit killed after its step-5 checkpoint, resumed, ends as the run never killed did."""
    straight = checkpointed(out + ".straight")
    killed = checkpointed(out + ".resumed", die_at=straight["calls"] - 3)  # in step 9
    assert "losses" not in killed
    resumed = checkpointed(out + ".resumed")
    same = torch.equal(resumed["losses"], straight["losses"])
    return same and all(torch.equal(resumed["params"][k], v) for k, v in straight["params"].items())


def fast_clock(x, y) -> dict:
    """fit with ``max_seconds`` while process 1's clock runs twice as fast: the steps each process took."""
    real = time.perf_counter
    if dist_.get_rank() == 1:
        time.perf_counter = lambda: 2 * real()
    try:
        pyro.clear_param_store()
        losses = fit(regression, AutoNormal(regression), x, y, num_steps=10**6, max_seconds=1.0, num_particles=4,
                     seed=0, stop=None, progress=False, data_plate="rows")  # fmt: skip
    finally:
        time.perf_counter = real
    params = torch.cat([v.detach().reshape(-1) for _, v in sorted(pyro.get_param_store().named_parameters())])
    return {"steps": len(losses), "params": params}


def nan_on_one_process(x, y) -> str:
    """fit while process 1's shard holds a NaN row: the error each process raises (process 0 hung before)."""
    pyro.clear_param_store()
    y = y.clone()
    if dist_.get_rank() == 1:
        y[3] = float("nan")
    try:
        fit(regression, AutoNormal(regression), x, y, num_steps=5, num_particles=4, seed=0, stop=None,
            progress=False, data_plate="rows")  # fmt: skip
    except (NonFiniteLossError, RuntimeError) as err:
        return f"{type(err).__name__}: {err}"
    return ""


def gathered(value) -> list:
    values = [None] * dist_.get_world_size()
    dist_.all_gather_object(values, value)
    return values


def main(out: str) -> None:
    rank, world = setup_distributed()
    x, y = shard(*data())
    results = {name: run(name, x, y, data_plate="rows") for name in GUIDES}
    defaults = with_defaults(x, y)
    members = shard(torch.arange(GROUPS))
    grouped = {"plate_aware": plate_aware(members), "mismatched": mismatched(members)}
    error = refused(x, y)  # on every process: fit's checks are collective
    grouped["resumed"] = gathered(resumed_equals_straight(out))
    grouped["fast_clock"] = gathered(fast_clock(x, y))
    grouped["nan_errors"] = gathered(nan_on_one_process(x, y))
    if rank == 0:
        torch.save({"world": world, "results": results, "refused": error, "defaults": defaults, **grouped}, out)
    dist_.barrier()
    dist_.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
