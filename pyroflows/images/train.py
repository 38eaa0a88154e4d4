"""Maximum-likelihood training of an :class:`~pyroflows.images.ImageFlow`.

One process, or many under ``torchrun`` (DistributedDataParallel; gloo on
CPU, NCCL on CUDA). Every random draw (batch order, dequantisation noise) comes
from a generator seeded by ``(seed, step)`` and is the same on every rank,
so a run resumed from a checkpoint, and a run split over processes, follow
the single-process run exactly.
"""

from __future__ import annotations

import math
import os
import pickle
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from pyroflows.images.model import ImageFlow
from pyroflows.training import NonFiniteLossError

__all__ = ["ImageHistory", "lr_factor", "save_image_grid", "setup_distributed", "train"]


@dataclass
class ImageHistory:
    """What :func:`train` measured: per-step training bits/dim and learning
    rate; per-evaluation test bits/dim, per-layer mean log-dets, the
    reconstruction error ``max |x - f(f^{-1}(x))|`` and seconds per epoch."""

    train_bpd: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    eval_epochs: list[int] = field(default_factory=list)
    test_bpd: list[float] = field(default_factory=list)
    layer_log_dets: list[dict] = field(default_factory=list)
    reconstruction_error: list[float] = field(default_factory=list)
    epoch_seconds: list[float] = field(default_factory=list)


def lr_factor(step: int, total_steps: int, warmup_steps: int, power: float = 1.0) -> float:
    """Linear warm-up over ``warmup_steps``, then polynomial decay
    ``(1 - progress) ** power`` to zero at ``total_steps``."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return max(0.0, 1.0 - progress) ** power


def setup_distributed() -> tuple[int, int]:
    """Join the process group when launched by ``torchrun`` (``WORLD_SIZE > 1``);
    return ``(rank, world_size)``."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def save_image_grid(
    images: torch.Tensor, path: str | Path, num_levels: int, nrow: int | None = None, scale: int | None = None
) -> None:
    """Tile pixel images ``(N, C, H, W)`` (C = 1 or 3) into one PNG, each pixel
    drawn as a ``scale x scale`` block (by default the grid is about 480 pixels wide)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n, c, h, w = images.shape
    nrow = nrow or math.ceil(math.sqrt(n))
    ncol = math.ceil(n / nrow)
    grid = torch.ones(c, ncol * (h + 1) + 1, nrow * (w + 1) + 1)
    for k in range(n):
        r, q = divmod(k, nrow)
        grid[:, 1 + r * (h + 1) : 1 + r * (h + 1) + h, 1 + q * (w + 1) : 1 + q * (w + 1) + w] = images[k].float()
    grid = (grid / (num_levels - 1)).clamp(0, 1)
    scale = scale or max(1, 480 // grid.shape[-1])
    grid = grid.repeat_interleave(scale, 1).repeat_interleave(scale, 2)
    image = grid[0].numpy() if c == 1 else grid.permute(1, 2, 0).numpy()
    plt.imsave(str(path), image, cmap="gray_r" if c == 1 else None, vmin=0, vmax=1)


_EVAL_STREAM = 1 << 40  # generator seeds of evaluation noise, apart from training steps


def _generator(seed: int, step: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + step)


def _epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 7919 + epoch + 1))


@torch.no_grad()
def _evaluate(model: ImageFlow, test_data, seed, batch_size, device):
    model.eval()
    total, record = 0.0, {}
    for start in range(0, len(test_data), batch_size):
        x = test_data[start : start + batch_size].to(device)
        noise = model.draw_noise(len(x), _generator(seed, _EVAL_STREAM + start))
        log_p = model.log_prob(x, noise, record=record if start == 0 else None)  # layer log-dets: first batch
        total += -log_p.sum().item() / (model.num_dims * math.log(2))
    x = test_data[:batch_size].to(device)
    z = model.flow_input(x, model.draw_noise(len(x), _generator(seed, _EVAL_STREAM - 1)))
    latents, _ = model.flow.encode(z)
    error = (model.flow.decode(latents) - z).abs().max().item()
    model.train()
    return total / len(test_data), record, error


CHECKPOINT_KEYS = ("model", "optimizer", "schedule", "history", "epoch")


def _load_checkpoint(path: Path, device) -> dict:
    """A training checkpoint, or a ``ValueError`` that says the file is damaged."""
    try:
        state = torch.load(path, map_location=device, weights_only=False)  # the history is a pickled dataclass
    except (EOFError, OSError, RuntimeError, pickle.UnpicklingError, ValueError) as err:
        raise ValueError(f"checkpoint {path} is corrupted or incomplete ({err}); delete it to start afresh") from err
    if not isinstance(state, dict) or any(key not in state for key in CHECKPOINT_KEYS):
        raise ValueError(f"checkpoint {path} is corrupted or incomplete: expected the keys {CHECKPOINT_KEYS}")
    return state


def train(
    model: ImageFlow,
    train_data: torch.Tensor,
    *,
    epochs: int = 10,
    batch_size: int = 64,
    lr: float = 1e-3,
    warmup_steps: int = 100,
    decay_power: float = 1.0,
    clip_grad: float | None = 50.0,
    test_data: torch.Tensor | None = None,
    eval_every: int = 1,
    checkpoint: str | Path | None = None,
    samples: str | Path | None = None,
    temperature: float = 0.8,
    seed: int = 0,
    progress: bool = True,
    callback: Callable[[int, ImageHistory], bool | None] | None = None,
) -> ImageHistory:
    """Train ``model`` by maximum likelihood (bits/dim) with Adam.

    The learning rate warms up linearly over ``warmup_steps`` and then decays
    polynomially (:func:`lr_factor`); gradients are clipped to norm
    ``clip_grad``. Every ``eval_every`` epochs it records test bits/dim,
    per-layer log-dets and the reconstruction error, writes a grid of
    samples at ``temperature`` to ``samples`` (a PNG path) and saves
    ``checkpoint``; a run started with an existing ``checkpoint`` resumes from
    it and follows the uninterrupted run exactly. ActNorm layers initialise on
    the first batch (the same on every rank). Under ``torchrun`` each rank
    takes its share of every batch; only rank 0 writes files. A NaN or Inf
    loss raises :class:`~pyroflows.training.NonFiniteLossError`.
    ``callback(epoch, history)`` runs after every epoch; returning ``True``
    stops the run there (a later call with the same ``checkpoint`` resumes it).
    """
    model.validate_data(train_data, "train_data")
    if test_data is not None:
        model.validate_data(test_data, "test_data")
    for name, value in (("epochs", epochs), ("batch_size", batch_size), ("eval_every", eval_every)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if batch_size > len(train_data):
        raise ValueError(f"batch_size {batch_size} exceeds the {len(train_data)} training images")
    rank, world = setup_distributed()
    if batch_size % world:
        raise ValueError(f"batch_size {batch_size} must divide among {world} processes")
    device = model.flow.top.mean.device
    steps_per_epoch = len(train_data) // batch_size
    total_steps = epochs * steps_per_epoch
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, total_steps, warmup_steps, decay_power)
    )
    history, start_epoch = ImageHistory(), 0
    path = Path(checkpoint) if checkpoint is not None else None
    if path is not None and path.exists():
        state = _load_checkpoint(path, device)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        history, start_epoch = state["history"], state["epoch"]
    else:
        with torch.no_grad():  # data-dependent init, identical on every rank
            first = train_data[_epoch_order(len(train_data), seed, 0)[:batch_size]].to(device)
            model.log_prob(first, model.draw_noise(batch_size, _generator(seed, 0)))
    if world > 1:
        net = DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
    else:
        net = model
    share = batch_size // world
    from tqdm.auto import tqdm

    show = None if progress and rank == 0 else True  # None: only on a terminal
    bar = tqdm(total=total_steps, initial=start_epoch * steps_per_epoch, disable=show)
    for epoch in range(start_epoch, epochs):
        began = time.perf_counter()
        order = _epoch_order(len(train_data), seed, epoch)
        for k in range(steps_per_epoch):
            step = epoch * steps_per_epoch + k
            index = order[k * batch_size : (k + 1) * batch_size][rank * share : (rank + 1) * share]
            noise = model.draw_noise(batch_size, _generator(seed, step))[rank * share : (rank + 1) * share]
            loss = net(train_data[index].to(device), noise).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            value = loss.item()
            if not math.isfinite(value):
                raise NonFiniteLossError(f"bits/dim is {value} at step {step}: lower lr or raise warmup_steps")
            if clip_grad is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
            optimizer.step()
            schedule.step()
            history.train_bpd.append(value)
            history.lr.append(optimizer.param_groups[0]["lr"])
            bar.update()
            bar.set_postfix(bpd=f"{value:.3f}", refresh=False)
        history.epoch_seconds.append(time.perf_counter() - began)
        if (epoch + 1) % eval_every == 0 or epoch + 1 == epochs:
            if test_data is not None:
                bpd, record, error = _evaluate(model, test_data, seed, batch_size, device)
                history.eval_epochs.append(epoch + 1)
                history.test_bpd.append(bpd)
                history.layer_log_dets.append(record)
                history.reconstruction_error.append(error)
                bar.set_postfix(bpd=f"{value:.3f}", test=f"{bpd:.3f}", refresh=False)
            if rank == 0:
                if samples is not None:
                    save_image_grid(model.sample(64, temperature).cpu(), samples, model.num_levels)
                if path is not None:
                    state = {
                        "model": model.state_dict(),
                        "optimizer": optimizer.state_dict(),
                        "schedule": schedule.state_dict(),
                        "history": history,
                        "epoch": epoch + 1,
                    }
                    torch.save(state, path.with_suffix(".tmp"))
                    os.replace(path.with_suffix(".tmp"), path)
        if callback is not None and callback(epoch + 1, history):
            break
    bar.close()
    return history
