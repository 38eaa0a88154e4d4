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

The plate must hold observations only: a latent inside it would be a
different member on each process (each numbers its shard's members from 0)
sharing one set of guide parameters, so `fit` refuses it. Local latents
(a plate-aware AutoFlow's members) are not supported in the sharded plate.
"""

from __future__ import annotations

import pyro
import torch
from pyro import poutine
from pyro.poutine.messenger import Messenger

from pyroflows.distributed import all_average, broadcast, rank_and_world

__all__ = ["ShardScale", "all_agree", "average_gradients", "prepare", "sharded", "synchronise_parameters"]


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


def prepare(model, guide, plate, args, kwargs, checkpoint, seed):
    """Model and guide scaled for this process's shard, set up once (the
    guide's parameters made) and synchronised to process 0's; every process
    then draws from the same seed."""
    if plate is None:
        raise ValueError("under torchrun with several processes fit needs data_plate: the plate over each shard")
    if checkpoint is not None:
        raise ValueError("checkpoint is not supported in data-parallel fit; save from process 0 after fit returns")
    model, scaled_guide = sharded(model, guide, plate, rank_and_world()[1])
    with torch.no_grad():
        trace = poutine.trace(scaled_guide).get_trace(*args, **kwargs)  # parameters and warm start on this shard
    latents = [
        name
        for name, site in trace.iter_stochastic_nodes()
        if _in_plate(site, plate) and not site["infer"].get("is_auxiliary")
    ]
    if latents:
        raise ValueError(
            f"data_plate {plate!r} holds the latents {latents}: each process would number its own members alike "
            "and share their guide parameters; shard a plate of observations only"
        )
    synchronise_parameters(guide)
    if seed is None:
        seed = torch.randint(2**31 - 1, (1,))
        broadcast([seed])
    pyro.set_rng_seed(int(seed))
    return model, scaled_guide


def _in_plate(site, plate: str) -> bool:
    return any(f.name == plate for f in site["cond_indep_stack"])


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


def average_gradients(params: list[torch.Tensor], loss: float) -> float:
    """Average the gradients of ``params`` over the processes (a missing one
    counts as zero); the mean loss."""
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    return all_average([p.grad for p in params], loss)
