"""A flow for discrete images whose reported bits/dim bounds the likelihood of the pixels."""

from __future__ import annotations

import math

import torch
from torch import nn

from pyroflows.images.dequantization import UniformDequantization, VariationalDequantization
from pyroflows.images.multiscale import MultiScaleFlow
from pyroflows.transforms.preprocessing import Logit

__all__ = ["ImageFlow"]


class ImageFlow(nn.Module):
    """Pixels ``x`` in ``{0, ..., K-1}`` -> dequantised ``u = (x + v) / K`` ->
    a preprocessing bijection -> a `MultiScaleFlow`.

    ``log_prob`` is the dequantisation bound on ``log P(x)`` (see
    `pyroflows.images.dequantization`) with every log-det counted,
    including the preprocessing's, so `bits_per_dim` is an honest
    upper bound on the code length of the discrete data.

    Args:
        flow: the density on the preprocessed images.
        num_levels: ``K`` (17 for scikit-learn's digits, 256 for 8-bit images).
        dequantization: ``"uniform"``, ``"variational"`` or a module with
            ``draw`` and ``forward`` (see the dequantisation classes).
        preprocess: ``"logit"`` (`Logit` with
            ``alpha``) or ``"center"`` (``u - 1/2``, log-det 0).

    Examples:
        >>> from pyroflows.images import glow
        >>> model = ImageFlow(glow((1, 8, 8), steps_per_scale=2, hidden_channels=8), num_levels=17)
        >>> x = torch.randint(0, 17, (8, 1, 8, 8))
        >>> model.bits_per_dim(x).item() > 0
        True
        >>> model.sample(2).shape, model.sample(2).dtype
        (torch.Size([2, 1, 8, 8]), torch.int64)
    """

    def __init__(
        self,
        flow: MultiScaleFlow,
        num_levels: int,
        dequantization: str | nn.Module = "uniform",
        preprocess: str = "logit",
        alpha: float = 0.05,
    ) -> None:
        super().__init__()
        if not isinstance(num_levels, int) or num_levels < 2:
            raise ValueError(f"num_levels must be an int >= 2, got {num_levels!r}")
        if preprocess not in ("logit", "center"):
            raise ValueError(f"preprocess must be 'logit' or 'center', got {preprocess!r}")
        self.flow, self.num_levels = flow, num_levels
        self.input_shape = flow.input_shape
        self.num_dims = math.prod(self.input_shape)
        if dequantization == "uniform":
            dequantization = UniformDequantization()
        elif dequantization == "variational":
            dequantization = VariationalDequantization(self.input_shape, num_levels)
        elif isinstance(dequantization, str):
            raise ValueError(f"dequantization must be 'uniform', 'variational' or a module, got {dequantization!r}")
        self.dequantization = dequantization
        self.preprocess = Logit(self.input_shape, alpha) if preprocess == "logit" else None

    def validate_data(self, x: torch.Tensor, name: str = "pixels") -> None:
        """Raise ``ValueError`` unless ``x`` holds integer pixels ``(N, C, H, W)`` in ``[0, num_levels)``."""
        shape = ", ".join(map(str, self.input_shape))
        if not torch.is_tensor(x) or x.dim() != 4 or tuple(x.shape[1:]) != self.input_shape:
            got = f"shape {tuple(x.shape)}" if torch.is_tensor(x) else type(x).__name__
            raise ValueError(f"expected {name} of shape (N, {shape}), got {got}")
        if x.is_floating_point() and not torch.equal(x, x.round()):
            raise ValueError(f"{name} must be integers in [0, num_levels); got non-integer values")
        if x.numel() and (x.min() < 0 or x.max() >= self.num_levels):
            raise ValueError(
                f"{name} must be in [0, {self.num_levels - 1}], got values in [{x.min().item()}, {x.max().item()}]"
            )

    def _pixels(self, x: torch.Tensor) -> torch.Tensor:
        self.validate_data(x)
        return x.to(self.flow.top.mean.dtype)

    def draw_noise(self, batch_size: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Dequantisation noise for ``batch_size`` images (uniform or Gaussian, by method)."""
        dtype = self.flow.top.mean.dtype
        shape = (batch_size, *self.input_shape)
        return self.dequantization.draw(shape, generator, self.flow.top.mean.device, dtype)

    def log_prob(self, x: torch.Tensor, noise: torch.Tensor | None = None, record: dict | None = None) -> torch.Tensor:
        """The bound on ``log P(x)`` in nats, one noise draw per image, shape ``(N,)``."""
        z, log_det, log_q = self._dequantize(x, noise)
        log_p = self.flow.log_prob(z, record) - log_det
        return log_p - log_q - self.num_dims * math.log(self.num_levels)

    def _dequantize(self, x, noise):
        x = self._pixels(x)
        if noise is None:
            noise = self.draw_noise(x.shape[0])
        v, log_q = self.dequantization(x, noise)
        u = (x + v) / self.num_levels
        if self.preprocess is None:
            return u - 0.5, 0.0, log_q
        z, log_det = self.preprocess.inverse_and_log_det(u, validate=False)
        return z, log_det, log_q

    def flow_input(self, x: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """The dequantised, preprocessed images the flow models."""
        return self._dequantize(x, noise)[0]

    def forward(self, x: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """Bits per dimension of each image (the training loss; what DDP wraps)."""
        return -self.log_prob(x, noise) / (self.num_dims * math.log(2))

    def bits_per_dim(self, x: torch.Tensor, num_samples: int = 1) -> torch.Tensor:
        """Mean bits/dim over ``x``. With ``num_samples > 1`` the bound is the
        importance-weighted one, $\\log \\frac1S \\sum_s P(x, v_s)/q(v_s|x)$, tighter."""
        if not isinstance(num_samples, int) or num_samples < 1:
            raise ValueError(f"num_samples must be a positive int, got {num_samples!r}")
        draws = torch.stack([self.log_prob(x) for _ in range(num_samples)])
        log_p = torch.logsumexp(draws, 0) - math.log(num_samples)
        return -log_p.mean() / (self.num_dims * math.log(2))

    @torch.no_grad()
    def sample(self, n: int, temperature: float = 1.0) -> torch.Tensor:
        """``n`` images of pixel values (int64), decoded from the flow at ``temperature``."""
        z = self.flow.sample(n, temperature)
        u = z + 0.5 if self.preprocess is None else self.preprocess.forward_and_log_det(z, validate=False)[0]
        return (u * self.num_levels).floor().clamp(0, self.num_levels - 1).long()
