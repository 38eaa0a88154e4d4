"""Maximum-likelihood training of an `ImageFlow`.

One process, or many under ``torchrun`` (DistributedDataParallel; gloo on
CPU, NCCL on CUDA). Every random draw (batch order, dequantisation noise) comes
from a generator seeded by ``(seed, step)`` and is the same on every rank,
so a run resumed from a checkpoint, and a run split over processes, follow
the single-process run exactly.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel

from pyroflows.distributed import all_average, setup_distributed
from pyroflows.images.model import ImageFlow
from pyroflows.training import Trainer, load_checkpoint, save_checkpoint, warmup_polynomial

__all__ = ["ImageHistory", "save_image_grid", "setup_distributed", "train_images"]


@dataclass
class ImageHistory:
    """What `train_images` measured: per-step training bits/dim and learning
    rate; per-evaluation test bits/dim, per-layer mean log-dets, the
    reconstruction error ``max |x - f(f^{-1}(x))|`` and seconds per epoch."""

    train_bpd: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    eval_epochs: list[int] = field(default_factory=list)
    test_bpd: list[float] = field(default_factory=list)
    layer_log_dets: list[dict] = field(default_factory=list)
    reconstruction_error: list[float] = field(default_factory=list)
    epoch_seconds: list[float] = field(default_factory=list)


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


CHECKPOINT_KEYS = ("model", "optimizer", "history", "epoch")


def train_images(
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
    polynomially (`warmup_polynomial`); gradients are
    clipped to norm ``clip_grad``. Every ``eval_every`` epochs it records test
    bits/dim, per-layer log-dets and the reconstruction error, writes a grid of
    samples at ``temperature`` to ``samples`` (a PNG path) and saves
    ``checkpoint``, from which a later run resumes exactly. ActNorm layers
    initialise on the first batch. Under ``torchrun`` each rank takes its share
    of every batch; only rank 0 writes files. A NaN or Inf loss raises
    `NonFiniteLossError`.
    ``callback(epoch, history)`` runs after every epoch; returning ``True``
    stops the run there (a later call with the same ``checkpoint`` resumes it).
    """
    rank, world = setup_distributed()
    _check_train_options(model, train_data, test_data, epochs, batch_size, eval_every, world)
    device, steps_per_epoch = model.flow.top.mean.device, len(train_data) // batch_size
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    history, start_epoch = _start(model, optimizer, train_data, batch_size, checkpoint, seed, device)
    net = model if world == 1 else DistributedDataParallel(model, device_ids=_ddp_devices(device))
    total = epochs * steps_per_epoch
    trainer = Trainer(
        optimizer,
        total,
        schedule=lambda step, done: warmup_polynomial(step, total, warmup_steps, decay_power),
        clip_norm=clip_grad,
        progress=progress and rank == 0,
        start_step=start_epoch * steps_per_epoch,
        advice="lower lr or raise warmup_steps",
        loss_name="bits/dim",
    )
    end_of_epoch = _EpochEnd(test_data, samples, temperature, checkpoint, seed, rank, batch_size)
    share = slice(rank * (batch_size // world), (rank + 1) * (batch_size // world))
    for epoch in range(start_epoch, epochs):
        _train_epoch(trainer, net, model, train_data, (seed, epoch, batch_size, share, world), history)
        if (epoch + 1) % eval_every == 0 or epoch + 1 == epochs:
            end_of_epoch(model, optimizer, history, epoch + 1)
        if callback is not None and callback(epoch + 1, history):
            break
    trainer.close()
    return history


def _ddp_devices(device: torch.device) -> list | None:
    return [device] if device.type == "cuda" else None


def _train_epoch(trainer: Trainer, net, model: ImageFlow, data, where: tuple, history: ImageHistory) -> None:
    """One pass over ``data`` in the epoch's order; this rank takes its ``share`` of each batch."""
    seed, epoch, batch_size, share, world = where
    began, order = time.perf_counter(), _epoch_order(len(data), seed, epoch)
    for k in range(len(data) // batch_size):
        index = order[k * batch_size : (k + 1) * batch_size][share]
        noise = model.draw_noise(batch_size, _generator(seed, trainer.step_count))[share]
        loss = net(data[index].to(model.flow.top.mean.device), noise).mean()
        # under DDP the ranks' mean: the whole batch's bits/dim, and a NaN on one rank stops all of them
        trainer.step(loss, None if world == 1 else all_average([], loss.detach().item()))
        history.train_bpd.append(trainer.losses[-1])
        history.lr.append(trainer.optimizer.param_groups[0]["lr"])
    history.epoch_seconds.append(time.perf_counter() - began)


def _check_train_options(model, train_data, test_data, epochs, batch_size, eval_every, world) -> None:
    model.validate_data(train_data, "train_data")
    if test_data is not None:
        model.validate_data(test_data, "test_data")
    for name, value in (("epochs", epochs), ("batch_size", batch_size), ("eval_every", eval_every)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if batch_size > len(train_data):
        raise ValueError(f"batch_size {batch_size} exceeds the {len(train_data)} training images")
    if batch_size % world:
        raise ValueError(f"batch_size {batch_size} must divide among {world} processes")


def _start(model, optimizer, train_data, batch_size, checkpoint, seed, device) -> tuple[ImageHistory, int]:
    """Resume from ``checkpoint`` if it exists, else initialise ActNorm on the first batch (the same on every rank)."""
    if checkpoint is not None and Path(checkpoint).exists():
        state = load_checkpoint(checkpoint, CHECKPOINT_KEYS, map_location=device)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        return state["history"], state["epoch"]
    with torch.no_grad():
        first = train_data[_epoch_order(len(train_data), seed, 0)[:batch_size]].to(device)
        model.log_prob(first, model.draw_noise(batch_size, _generator(seed, 0)))
    return ImageHistory(), 0


@dataclass
class _EpochEnd:
    """What happens after an evaluated epoch: test bits/dim and layer records; on
    rank 0 the sample grid and the checkpoint (written atomically)."""

    test_data: torch.Tensor | None
    samples: str | Path | None
    temperature: float
    checkpoint: str | Path | None
    seed: int
    rank: int
    batch_size: int

    def __call__(self, model: ImageFlow, optimizer, history: ImageHistory, epochs_done: int) -> None:
        if self.test_data is not None:
            device = model.flow.top.mean.device
            bpd, record, error = _evaluate(model, self.test_data, self.seed, self.batch_size, device)
            history.eval_epochs.append(epochs_done)
            history.test_bpd.append(bpd)
            history.layer_log_dets.append(record)
            history.reconstruction_error.append(error)
        if self.rank != 0:
            return
        if self.samples is not None:
            save_image_grid(model.sample(64, self.temperature).cpu(), self.samples, model.num_levels)
        if self.checkpoint is not None:
            state = {"model": model.state_dict(), "optimizer": optimizer.state_dict()}
            save_checkpoint(self.checkpoint, {**state, "history": history, "epoch": epochs_done})
