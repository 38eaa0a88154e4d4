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
"""

from __future__ import annotations

import pyro
import torch
from pyro.poutine.messenger import Messenger

from pyroflows.distributed import all_average, broadcast

__all__ = ["ShardScale"]


class ShardScale(Messenger):
    """Multiply the scale of every sample site inside plate ``plate`` by
    ``world`` (the shard's share of the whole data is ``1 / world``)."""

    def __init__(self, plate: str, world: int) -> None:
        super().__init__()
        self.plate, self.world, self.seen = plate, world, False

    def _process_message(self, msg) -> None:
        if msg["type"] == "sample" and any(f.name == self.plate for f in msg["cond_indep_stack"]):
            msg["scale"] = self.world * msg["scale"]
            self.seen = True


def sharded(model, guide, plate: str, world: int):
    """``model`` and ``guide`` with plate ``plate`` scaled for ``world`` processes."""
    if not isinstance(plate, str):
        raise TypeError(f"data_plate must name the plate over the sharded data, got {plate!r}")
    return ShardScale(plate, world)(model), ShardScale(plate, world)(guide)


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
