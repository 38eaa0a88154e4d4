"""Run by tests/test_images.py under torchrun: gradients and a short training
run of a tiny Glow split over the launched processes (gloo on CPU)."""

import sys

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from pyroflows.images import ImageFlow, glow
from pyroflows.images.train import setup_distributed, train_images
from pyroflows.training import NonFiniteLossError


def tiny_model() -> ImageFlow:
    torch.manual_seed(0)
    return ImageFlow(glow((1, 4, 4), num_scales=1, steps_per_scale=2, hidden_channels=8, seed=0), num_levels=5)


def tiny_data() -> torch.Tensor:
    return torch.randint(0, 5, (32, 1, 4, 4), generator=torch.Generator().manual_seed(1))


def one_step_gradients(model, data, rank: int, world: int) -> dict:
    """Gradients of the mean bits/dim over ``data`` (this rank's share under DDP)."""
    noise = model.draw_noise(len(data), torch.Generator().manual_seed(2))
    with torch.no_grad():
        model.log_prob(data, noise)  # ActNorm init on the whole batch, as train_images() does
    share = len(data) // world
    part = slice(rank * share, (rank + 1) * share)
    net = DistributedDataParallel(model) if world > 1 else model
    net(data[part], noise[part]).mean().backward()
    return {name: p.grad.clone() for name, p in model.named_parameters()}


def nan_on_one_rank(rank: int) -> str:
    """Train while rank 1's third batch gives a NaN loss: the error each rank raises (a hang before)."""
    model, calls = tiny_model(), [0]
    forward = model.forward

    def flaky(*args, **kwargs):
        calls[0] += 1
        out = forward(*args, **kwargs)
        return out * float("nan") if rank == 1 and calls[0] == 3 else out

    model.forward = flaky
    try:
        train_images(model, tiny_data(), epochs=2, batch_size=8, warmup_steps=2, progress=False)
    except NonFiniteLossError as err:
        return str(err)
    return ""


def main(out: str) -> None:
    rank, world = setup_distributed()
    grads = one_step_gradients(tiny_model(), tiny_data(), rank, world)
    model = tiny_model()
    train_images(model, tiny_data(), epochs=2, batch_size=8, warmup_steps=2, progress=False)
    errors = [None] * world
    dist.all_gather_object(errors, nan_on_one_rank(rank))
    if rank == 0:
        torch.save({"grads": grads, "state": model.state_dict(), "world": world, "nan_errors": errors}, out)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
