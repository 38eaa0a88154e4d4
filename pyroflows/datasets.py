"""Seeded 2-D toy densities used across the flow literature (FFJORD's set).

Examples:
    >>> x = toy_2d("moons", 1000, seed=0)
    >>> x.shape, x.dtype
    (torch.Size([1000, 2]), torch.float32)
"""

from __future__ import annotations

import math

import torch

TOY_2D = ("8gaussians", "checkerboard", "2spirals", "moons")


def toy_2d(name: str, n: int, seed: int = 0) -> torch.Tensor:
    """Draw ``n`` points of toy density ``name`` (one of `TOY_2D`)."""
    if name not in TOY_2D:
        raise ValueError(f"unknown toy density {name!r}; expected one of {TOY_2D}")
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    gen = torch.Generator().manual_seed(seed)
    return _GENERATORS[name](n, gen).float()


def _eight_gaussians(n, gen):
    angles = torch.arange(8) * (math.pi / 4)
    centers = 4.0 * torch.stack([angles.cos(), angles.sin()], dim=1)
    pick = torch.randint(8, (n,), generator=gen)
    points = centers[pick] + 0.5 * torch.randn(n, 2, generator=gen)
    return points / 1.414


def _checkerboard(n, gen):
    x1 = 4 * torch.rand(n, generator=gen) - 2
    x2 = torch.rand(n, generator=gen) - 2 * torch.randint(2, (n,), generator=gen)
    x2 = x2 + torch.floor(x1) % 2
    return 2 * torch.stack([x1, x2], dim=1)


def _two_spirals(n, gen):
    half = n // 2
    t = torch.sqrt(torch.rand(half, 1, generator=gen)) * (540 * 2 * math.pi / 360)
    arm = torch.cat([-torch.cos(t) * t, torch.sin(t) * t], dim=1) + 0.5 * torch.rand(half, 2, generator=gen)
    points = torch.cat([arm, -arm])
    if n % 2:
        points = torch.cat([points, arm[:1]])
    points = points / 3 + 0.1 * torch.randn(n, 2, generator=gen)
    return points[torch.randperm(n, generator=gen)]


def _moons(n, gen):
    upper = n // 2
    t_up = math.pi * torch.rand(upper, generator=gen)
    t_down = math.pi * torch.rand(n - upper, generator=gen)
    up = torch.stack([t_up.cos(), t_up.sin()], dim=1)
    down = torch.stack([1 - t_down.cos(), 0.5 - t_down.sin()], dim=1)
    points = torch.cat([up, down]) + 0.1 * torch.randn(n, 2, generator=gen)
    points = 2 * points + torch.tensor([-1.0, -0.2])
    return points[torch.randperm(n, generator=gen)]


_GENERATORS = {
    "8gaussians": _eight_gaussians,
    "checkerboard": _checkerboard,
    "2spirals": _two_spirals,
    "moons": _moons,
}
