"""The process group's side of data parallelism, shared by image training
and data-parallel SVI: joining the group under ``torchrun``, this process's
shard of the data, and averaging tensors across processes."""

from __future__ import annotations

import contextlib
import os

import torch
import torch.distributed as dist

__all__ = ["process_local", "setup_distributed", "shard"]

_LOCAL = [0]  # how many process_local() blocks are open


@contextlib.contextmanager
def process_local():
    """Within it, `setup_distributed` and `rank_and_world` report one process,
    ``(0, 1)``: for work each process does alone (a guide's warm-start fit
    on its own shard, inside a data-parallel fit)."""
    _LOCAL[0] += 1
    try:
        yield
    finally:
        _LOCAL[0] -= 1


def setup_distributed() -> tuple[int, int]:
    """Join the process group when launched by ``torchrun`` (``WORLD_SIZE > 1``;
    NCCL with CUDA, else gloo); return ``(rank, world_size)``."""
    joined = dist.is_available() and dist.is_initialized()
    if not _LOCAL[0] and not joined and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return rank_and_world()


def rank_and_world() -> tuple[int, int]:
    """``(rank, world_size)`` of the joined process group, ``(0, 1)`` outside one."""
    if _LOCAL[0]:
        return 0, 1
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def shard(*tensors: torch.Tensor, rank: int | None = None, world: int | None = None):
    """This process's contiguous block of rows (dim 0) of each tensor; the
    blocks of all processes partition the rows (sizes differ by at most one).

    Examples:
        >>> x = torch.arange(10)
        >>> shard(x, rank=1, world=3)
        tensor([3, 4, 5])
    """
    if rank is None or world is None:
        rank, world = rank_and_world()
    if not 0 <= rank < world:
        raise ValueError(f"rank must be in [0, world), got rank {rank} and world {world}")
    sizes = {len(t) for t in tensors}
    if len(sizes) != 1:
        raise ValueError(f"tensors to shard must have the same number of rows, got {sorted(sizes)}")
    (n,) = sizes
    start, stop = rank * n // world, (rank + 1) * n // world
    parts = tuple(t[start:stop] for t in tensors)
    return parts[0] if len(parts) == 1 else parts


def all_average(tensors: list[torch.Tensor], extra: float | None = None) -> float | None:
    """Replace each tensor (in place) by its mean over the processes, in one
    all-reduce; ``extra`` (a number, e.g. the loss) rides along and its mean
    is returned."""
    flat = torch.cat([t.reshape(-1).to(torch.float64) for t in tensors] + [torch.tensor([extra or 0.0])])
    if flat.device.type == "cpu" and dist.get_backend() == "nccl":
        flat = flat.cuda()
    dist.all_reduce(flat)
    flat = flat.cpu() / dist.get_world_size()
    offset = 0
    for t in tensors:
        t.copy_(flat[offset : offset + t.numel()].view_as(t))
        offset += t.numel()
    return None if extra is None else float(flat[-1])


def broadcast(tensors: list[torch.Tensor], source: int = 0) -> None:
    """Overwrite each tensor (in place) with process ``source``'s values."""
    for t in tensors:
        if dist.get_backend() == "nccl" and t.device.type == "cpu":
            moved = t.cuda()
            dist.broadcast(moved, source)
            t.copy_(moved.cpu())
        else:
            dist.broadcast(t, source)
