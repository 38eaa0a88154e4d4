"""Normalisation layers: ActNorm (vectors) and a batch-norm flow layer."""

from __future__ import annotations

import torch
from torch import nn

from pyroflows.transforms.base import FlowTransform


class ActNorm(FlowTransform):
    """Per-element (vectors) or per-channel (images) affine map with
    data-dependent initialisation (Glow, arXiv:1807.03039).

    $$
    y = x \\odot e^{s} + b, \\qquad \\log|\\det J| = P \\sum_c s_c
    $$

    where ``P`` is the number of pixels (``H * W`` for an input ``(C, H, W)``,
    1 for vectors). The first call, in either direction, sets ``s`` and ``b``
    so that its *output* has zero mean and unit variance per element or
    channel (the data direction is the inverse: ``log_prob`` standardises the
    data). The ``initialized`` flag is a buffer, so it survives
    ``state_dict`` round trips. Both directions are cheap.

    Args:
        input_dim: ``D`` for vectors ``(*, D)``, or an image shape ``(C, H, W)``.

    Examples:
        >>> layer = ActNorm(2)
        >>> x, _ = layer.inverse_and_log_det(torch.tensor([[1.0, 10.0], [3.0, 30.0]]))
        >>> x.detach().round(decimals=4).tolist()
        [[-1.0, -1.0], [1.0, 1.0]]
        >>> ActNorm((3, 8, 8)).log_scale.shape
        torch.Size([3, 1, 1])
    """

    def __init__(self, input_dim: int | tuple[int, int, int], eps: float = 1e-6) -> None:
        shape = (input_dim,) if isinstance(input_dim, int) else tuple(input_dim)
        if len(shape) not in (1, 3) or not all(isinstance(n, int) and n >= 1 for n in shape):
            raise ValueError(f"ActNorm takes input_dim D or an image shape (C, H, W), got {input_dim!r}")
        super().__init__(shape)
        self.eps = eps
        self.pixels = 1 if len(shape) == 1 else shape[1] * shape[2]
        param_shape = shape[:1] + (1,) * (len(shape) - 1)
        self.log_scale = nn.Parameter(torch.zeros(param_shape))
        self.shift = nn.Parameter(torch.zeros(param_shape))
        self.register_buffer("initialized", torch.tensor(False))

    def skip_data_init(self) -> None:
        """Keep the current parameters (the identity when fresh): no
        data-dependent initialisation on the first call (a flow guide or
        prior has no data batch to standardise)."""
        self.initialized.fill_(True)

    @torch.no_grad()
    def _initialize(self, value: torch.Tensor, inverse: bool) -> None:
        channels = self.event_shape[0]
        flat = value.reshape(-1, channels, self.pixels).transpose(0, 1).reshape(channels, -1)
        if flat.shape[1] < 2:
            raise ValueError(f"ActNorm initialises from a batch of at least 2 inputs, got {flat.shape[1]}")
        mean, std = flat.mean(1), flat.std(1, unbiased=False).clamp(min=self.eps)
        mean, std = mean.view_as(self.shift), std.view_as(self.shift)
        if inverse:  # x = (y - b) e^{-s} standardised
            self.log_scale.copy_(std.log())
            self.shift.copy_(mean)
        else:  # y = x e^{s} + b standardised
            self.log_scale.copy_(-std.log())
            self.shift.copy_(-mean / std)
        self.initialized.fill_(True)

    def _log_det(self, value):
        batch = value.shape[: value.dim() - len(self.event_shape)]
        return (self.log_scale.sum() * self.pixels).expand(batch)

    def _forward_and_log_det(self, x, context):
        if not self.initialized:
            self._initialize(x, inverse=False)
        return x * self.log_scale.exp() + self.shift, self._log_det(x)

    def _inverse_and_log_det(self, y, context):
        if not self.initialized:
            self._initialize(y, inverse=True)
        return (y - self.shift) * torch.exp(-self.log_scale), self._log_det(y)


class BatchNorm(FlowTransform):
    """Batch normalisation as a flow layer (RealNVP, arXiv:1605.08803, sec. 3.7).

    In the data direction (inverse), in training mode, the batch mean and
    variance standardise the input and update running averages; in eval
    mode, and always in the forward (sampling) direction, the running
    averages are used:

    $$
    x = e^{\\gamma} \\frac{y - \\mu}{\\sqrt{\\sigma^2 + \\epsilon}} + \\beta, \\qquad
    \\log|\\det \\partial y / \\partial x| = \\sum_i \\tfrac12 \\log(\\sigma_i^2 + \\epsilon) - \\gamma_i
    $$

    Both directions are cheap.
    """

    def __init__(self, input_dim: int, momentum: float = 0.1, eps: float = 1e-5) -> None:
        super().__init__((input_dim,))
        if not 0 < momentum <= 1:
            raise ValueError(f"momentum must be in (0, 1], got {momentum}")
        self.momentum = momentum
        self.eps = eps
        self.log_gamma = nn.Parameter(torch.zeros(input_dim))
        self.beta = nn.Parameter(torch.zeros(input_dim))
        self.register_buffer("running_mean", torch.zeros(input_dim))
        self.register_buffer("running_var", torch.ones(input_dim))

    def _log_det(self, var, value):
        return (0.5 * torch.log(var + self.eps) - self.log_gamma).sum().expand(value.shape[:-1])

    def _forward_and_log_det(self, x, context):
        mean, var = self.running_mean, self.running_var
        y = (x - self.beta) * torch.exp(-self.log_gamma) * torch.sqrt(var + self.eps) + mean
        return y, self._log_det(var, x)

    def _inverse_and_log_det(self, y, context):
        if self.training:
            flat = y.reshape(-1, y.shape[-1])
            if flat.shape[0] < 2:
                raise ValueError(f"BatchNorm in training mode needs a batch of at least 2, got {flat.shape[0]}")
            mean, var = flat.mean(0), flat.var(0, unbiased=False)
            with torch.no_grad():
                self.running_mean.lerp_(mean.detach(), self.momentum)
                self.running_var.lerp_(var.detach(), self.momentum)
        else:
            mean, var = self.running_mean, self.running_var
        x = (y - mean) / torch.sqrt(var + self.eps) * self.log_gamma.exp() + self.beta
        return x, self._log_det(var, y)
