"""Data-parallel SVI: `fit` under ``torchrun``, each process holding a shard
of the data.

Each process runs the model on its own shard, inside the plate named
``data_plate``; every site in that plate is scaled by the number of
processes (on top of Pyro's own subsampling scale), so each process's ELBO
is an unbiased estimate of the whole data's, and so is their average. All
processes draw the same particles (same seed), their gradients and losses
are averaged in one all-reduce per step, and every process takes the same
optimiser step: with equal shards and no subsampling, one step equals a
single process's step on the whole batch. Parameters are set up once (the
guide's warm start runs on every process's shard) and then broadcast from
process 0, so all processes start from its guide. Only process 0 shows
progress; save from process 0 after `fit` returns.

Two ways to shard a plate. (1) Each process declares it at its shard's size
(``pyro.plate("rows", len(x_shard))``): its sites are scaled by the number
of processes, and it must hold observations only (a latent in it would be a
different member on each process, numbered from 0 alike, sharing one set of
guide parameters: `fit` refuses it). (2) Each process declares it at the
full size with its own members as the subsample (``pyro.plate("groups", n,
subsample=shard(torch.arange(n)))``, the guide given the same plate, as
AutoFlow's and Pyro's ``create_plates=``): Pyro's subsample scale already
makes each process's ELBO unbiased, members keep their global numbers, and
the plate may hold latents (a plate-aware AutoFlow's members: each
member's parameters get their gradient from the one process that holds it).
`fit` tells the two apart by checking that the processes' members
partition the plate, so in (2) each process runs all its members every
step (a minibatch within a shard would not partition it; such a plate is
treated as (1)).
"""

from __future__ import annotations

import contextlib

import pyro
import torch
from pyro import poutine
from pyro.infer.autoguide.initialization import InitMessenger
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import site_is_subsample

from pyroflows.distributed import all_average, broadcast, rank_and_world
from pyroflows.infer.latent import init_to_mean_or_zero

__all__ = [
    "ShardScale",
    "all_agree",
    "together",
    "average_gradients",
    "numbered_across_processes",
    "prepare",
    "sharded",
    "synchronise_parameters",
]


class ShardScale(Messenger):
    """Multiply the scale of every sample site inside plate ``plate`` by
    ``world`` (the shard's share of the whole data is ``1 / world``)."""

    def __init__(self, plate: str, world: int) -> None:
        super().__init__()
        self.plate, self.world = plate, world

    def _process_message(self, msg) -> None:
        if msg["type"] == "sample" and _in_plate(msg, self.plate):
            msg["scale"] = self.world * msg["scale"]


def sharded(model, guide, plate: str, world: int):
    """``model`` and ``guide`` with plate ``plate`` scaled for ``world`` processes."""
    return ShardScale(plate, world)(model), ShardScale(plate, world)(guide)


def prepare(model, guide, plate, args, kwargs, seed):
    """Model and guide scaled for this process's shard, set up once (the
    guide's parameters made) and synchronised to process 0's; every process
    then draws from the same seed. A plate numbered across the processes
    (`numbered_across_processes`) keeps Pyro's own subsample scale and may
    hold latents."""
    if plate is None:
        raise ValueError("under torchrun with several processes fit needs data_plate: the plate over each shard")
    index = _plate_index(model, plate, args, kwargs)
    numbered = numbered_across_processes(*index)
    scaled_model, scaled_guide = (model, guide) if numbered else sharded(model, guide, plate, rank_and_world()[1])
    with together(0), torch.no_grad():
        trace = poutine.trace(scaled_guide).get_trace(*args, **kwargs)  # parameters and warm start on this shard
    _check_members(trace, plate, numbered, index[0])
    synchronise_parameters(guide)  # the guide itself: its buffers too
    if seed is None:
        seed = torch.randint(2**31 - 1, (1,))
        broadcast([seed])
    pyro.set_rng_seed(int(seed))
    return scaled_model, scaled_guide


def _plate_index(model, plate: str, args, kwargs) -> tuple[torch.Tensor, int]:
    """The members of ``plate`` this process's model runs, and the plate's full size."""
    with torch.no_grad(), poutine.block(), InitMessenger(init_to_mean_or_zero):
        trace = poutine.trace(model).get_trace(*args, **kwargs)
    site = trace.nodes.get(plate)
    if site is None or site["type"] != "sample" or not site_is_subsample(site):
        raise ValueError(f"data_plate {plate!r} is not a plate of the model")
    return site["value"], site["fn"].size


def numbered_across_processes(index: torch.Tensor, size: int) -> bool:
    """Whether every process declares the plate at the same full ``size``
    with its own members ``index`` as the subsample, the processes' members
    together each member once: ``pyro.plate(name, size,
    subsample=shard(torch.arange(size)))``."""
    sizes = torch.tensor([float(size)])
    all_average([sizes])
    if not all_agree(sizes.item() == size):
        return False
    counts = torch.zeros(size, dtype=torch.float64)
    counts.index_add_(0, index.long().cpu(), torch.ones(len(index), dtype=torch.float64))
    all_average([counts])
    return bool(torch.allclose(counts * rank_and_world()[1], torch.ones_like(counts)))


def _check_members(trace, plate: str, numbered: bool, index: torch.Tensor) -> None:
    """Latents in a plate each process numbers from 0 would share guide
    parameters across different members; the guide must run the model's members."""
    latents = [
        name
        for name, site in trace.iter_stochastic_nodes()
        if _in_plate(site, plate) and not site["infer"].get("is_auxiliary")
    ]
    how = (
        f"declare it at its full size with this process's members, pyro.plate({plate!r}, size, "
        "subsample=shard(torch.arange(size))), and give the guide the same plate (create_plates=...)"
    )
    if latents and not numbered:
        raise ValueError(
            f"data_plate {plate!r} holds the latents {latents}: each process numbers its own members from 0, "
            f"so they would share guide parameters; {how}"
        )
    site = trace.nodes.get(plate)
    if numbered and site is not None and site["type"] == "sample" and not torch.equal(site["value"], index):
        raise ValueError(f"the guide runs other members of plate {plate!r} than the model; {how}")


def _in_plate(site, plate: str) -> bool:
    return any(f.name == plate for f in site["cond_indep_stack"])


@contextlib.contextmanager
def together(step: int):
    """One process's share of a collective step: an error raised inside is
    voted to every process (each then raises) instead of leaving them waiting
    in the next all-reduce. A single process just runs it."""
    if rank_and_world()[1] == 1:
        yield
        return
    try:
        yield
    except Exception:
        all_agree(False)
        raise
    if not all_agree(True):
        raise RuntimeError(f"another data-parallel process failed at step {step}; its own error says why")


def all_agree(flag: bool) -> bool:
    """Whether every process says yes (so that all stop at the same step)."""
    votes = torch.tensor([float(flag)])
    all_average([votes])
    return bool(votes.item() == 1.0)


def synchronise_parameters(guide) -> None:
    """Give every process process 0's parameters: Pyro's param store and the guide's buffers."""
    store = pyro.get_param_store()
    tensors = [p.data for _, p in sorted(store.named_parameters())]
    if isinstance(guide, torch.nn.Module):
        tensors += [b for b in guide.buffers() if b.is_floating_point()]
    broadcast(tensors)


def average_gradients(params: list[torch.Tensor], loss: float, seconds: float) -> tuple[float, float]:
    """Average the gradients of ``params`` over the processes (a missing one
    counts as zero); the mean loss and the mean of the processes' clocks
    (``seconds``), one clock that all of them schedule and stop by."""
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    clock = torch.tensor([seconds], dtype=torch.float64)
    loss = all_average([p.grad for p in params] + [clock], loss)
    return loss, float(clock)
