"""Multi-scale flows for images: levels of layers with half the channels
factored out to a learned conditional Gaussian after each level (RealNVP,
arXiv:1605.08803, sec. 3.6; Glow, arXiv:1807.03039)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import pyro.distributions as dist
import torch
from torch import nn
from torch.distributions import constraints

from pyroflows.transforms.base import FlowTransform

__all__ = ["GaussianPrior", "MultiScaleDistribution", "MultiScaleFlow", "SplitPrior", "diagonal_normal_log_prob"]

_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


def diagonal_normal_log_prob(z: torch.Tensor, mean: torch.Tensor, log_std: torch.Tensor) -> torch.Tensor:
    """Log density of ``z`` (*, C, H, W) under independent normals, summed over ``(C, H, W)``."""
    terms = -0.5 * ((z - mean) * torch.exp(-log_std)).square() - log_std - _HALF_LOG_2PI
    return terms.flatten(-3).sum(-1)


class GaussianPrior(nn.Module):
    """A diagonal Gaussian over ``(C, H, W)`` with learned mean and log-std
    (zero at initialisation: a standard normal)."""

    def __init__(self, shape: tuple[int, int, int]) -> None:
        super().__init__()
        self.mean = nn.Parameter(torch.zeros(shape))
        self.log_std = nn.Parameter(torch.zeros(shape))

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        return diagonal_normal_log_prob(z, self.mean, self.log_std)

    def sample(self, n: int, temperature: float = 1.0) -> torch.Tensor:
        noise = torch.randn(n, *self.mean.shape, device=self.mean.device, dtype=self.mean.dtype)
        return self.mean + temperature * self.log_std.exp() * noise


class SplitPrior(nn.Module):
    """The Gaussian of the factored-out channels given the kept ones: a
    zero-initialised 3x3 convolution of the kept half gives mean and log-std
    (Glow's learned prior for the split)."""

    def __init__(self, kept_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(kept_channels, 2 * out_channels, 3, padding=1)
        nn.init.zeros_(self.conv.weight)
        nn.init.zeros_(self.conv.bias)

    def _params(self, kept: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.conv(kept).chunk(2, dim=1)

    def log_prob(self, z: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
        return diagonal_normal_log_prob(z, *self._params(kept))

    def sample(self, kept: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
        mean, log_std = self._params(kept)
        return mean + temperature * log_std.exp() * torch.randn_like(mean)


class MultiScaleFlow(nn.Module):
    """A multi-scale flow over images ``(N, C, H, W)``.

    Each level is a stack of layers in base -> data order (as
    ``ComposeTransformModule`` lists them), usually ending with an
    `Unsqueeze`, so that in the data -> base
    direction it squeezes first. After every level but the last, the first
    half of the channels goes on and the second half is factored out to a
    `SplitPrior` conditioned on the first; the last level's output
    goes to a learned `GaussianPrior`. Density evaluation is one
    conditioner pass per layer; so is sampling.

    Args:
        levels: the layers of each level, base -> data order; level ``i+1``
            takes the kept half of level ``i``'s output.

    Examples:
        >>> from pyroflows.images import glow
        >>> flow = glow((1, 8, 8), num_scales=2, steps_per_scale=2, hidden_channels=8)
        >>> flow.log_prob(torch.rand(4, 1, 8, 8)).shape
        torch.Size([4])
        >>> flow.sample(3).shape
        torch.Size([3, 1, 8, 8])
    """

    def __init__(self, levels: Sequence[Sequence[FlowTransform]]) -> None:
        super().__init__()
        if not levels or any(not level for level in levels):
            raise ValueError("MultiScaleFlow needs at least one level, each with at least one layer")
        self.levels = nn.ModuleList(nn.ModuleList(level) for level in levels)
        self.input_shape = tuple(levels[0][-1].output_shape)
        self.splits = nn.ModuleList()
        for i, (level, following) in enumerate(zip(levels[:-1], levels[1:], strict=True)):
            c, h, w = level[0].event_shape
            kept = (c // 2, h, w)
            if tuple(following[-1].output_shape) != kept:
                raise ValueError(
                    f"level {i + 1} must take the kept half {kept} of level {i}'s output, "
                    f"but takes {tuple(following[-1].output_shape)}"
                )
            self.splits.append(SplitPrior(c // 2, c - c // 2))
        self.top = GaussianPrior(tuple(levels[-1][0].event_shape))

    def _check(self, x: torch.Tensor) -> None:
        if not torch.is_tensor(x) or x.dim() != 4 or tuple(x.shape[1:]) != self.input_shape:
            got = f"shape {tuple(x.shape)}" if torch.is_tensor(x) else type(x).__name__
            raise ValueError(f"expected images of shape (N, {', '.join(map(str, self.input_shape))}), got {got}")

    def encode(self, x: torch.Tensor, record: dict | None = None) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Data -> latents (one per factored-out split, then the top) and
        ``log|det d(latents)/dx|``. ``record`` collects each layer's mean log-det."""
        latents, _, log_det = self._encode(x, record)
        return latents, log_det

    def _encode(self, x, record):
        self._check(x)
        h, total = x, x.new_zeros(x.shape[0])
        latents, kept = [], []
        for i, level in enumerate(self.levels):
            for j, layer in reversed(list(enumerate(level))):
                h, log_det = layer.inverse_and_log_det(h, validate=False)
                total = total - log_det
                if record is not None:
                    record[f"level{i}.{j}.{type(layer).__name__}"] = -log_det.detach().mean().item()
            if i < len(self.splits):
                c = h.shape[1] // 2
                h, z = h[:, :c], h[:, c:]
                latents.append(z)
                kept.append(h)
        latents.append(h)
        return latents, kept, total

    def decode(self, latents: Sequence[torch.Tensor]) -> torch.Tensor:
        """Latents -> data, the inverse of `encode`."""
        return self._decode(latents[-1], lambda i, h: latents[i])

    def _decode(self, h, factored):
        for i in reversed(range(len(self.levels))):
            if i < len(self.splits):
                h = torch.cat([h, factored(i, h)], dim=1)
            for layer in self.levels[i]:
                h = layer.forward_and_log_det(h, validate=False)[0]
        return h

    def log_prob(self, x: torch.Tensor, record: dict | None = None) -> torch.Tensor:
        """``log p(x)`` (nats) of images ``(N, C, H, W)``, shape ``(N,)``."""
        latents, kept, total = self._encode(x, record)
        total = total + self.top.log_prob(latents[-1])
        for split, z, h in zip(self.splits, latents, kept, strict=False):
            total = total + split.log_prob(z, h)
        return total

    @torch.no_grad()
    def sample(self, n: int, temperature: float = 1.0) -> torch.Tensor:
        """``n`` images; ``temperature`` scales every prior's standard deviation."""
        return self.rsample(n, temperature)

    def rsample(self, n: int, temperature: float = 1.0) -> torch.Tensor:
        """Like `sample`, differentiable in the parameters (reparametrised)."""
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be a positive int, got {n!r}")
        if not temperature > 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        return self._sample(n, temperature)

    def distribution(self, batch_shape: tuple[int, ...] = ()) -> MultiScaleDistribution:
        """This flow as a Pyro distribution over ``(C, H, W)`` (for ``pyro.sample``)."""
        return MultiScaleDistribution(self, batch_shape)

    def _sample(self, n, temperature):
        top = self.top.sample(n, temperature)
        return self._decode(top, lambda i, h: self.splits[i].sample(h, temperature))


class MultiScaleDistribution(dist.TorchDistribution):
    """A `MultiScaleFlow` as a Pyro distribution with event shape
    ``(C, H, W)``: exact ``log_prob``, and ``rsample`` through the flow.

    Examples:
        >>> from pyroflows.images import glow
        >>> flow = glow((1, 4, 4), num_scales=1, steps_per_scale=1, hidden_channels=4)
        >>> d = flow.distribution()
        >>> d.log_prob(d.sample((3,))).shape
        torch.Size([3])
    """

    arg_constraints: dict = {}
    support = constraints.independent(constraints.real, 3)
    has_rsample = True

    def __init__(self, flow: MultiScaleFlow, batch_shape: tuple[int, ...] = (), validate_args=None) -> None:
        self.flow = flow
        super().__init__(torch.Size(batch_shape), torch.Size(flow.input_shape), validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        return MultiScaleDistribution(self.flow, tuple(batch_shape))

    def rsample(self, sample_shape=torch.Size()) -> torch.Tensor:
        shape = torch.Size(sample_shape) + self.batch_shape
        x = self.flow.rsample(max(1, shape.numel()))
        return x.reshape(*shape, *self.event_shape)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        batch = value.shape[: value.dim() - 3]
        return self.flow.log_prob(value.reshape(-1, *self.event_shape)).reshape(batch)
