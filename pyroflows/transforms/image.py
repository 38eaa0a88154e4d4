"""Layers for images ``(*, C, H, W)``: squeeze, image couplings and the Glow step.

Multi-scale models (``pyroflows.images``) stack them; each layer is also a
Pyro ``TransformModule`` with a three-dimensional event, so a single-scale
flow works in ``dist.TransformedDistribution`` as it is.
"""

from __future__ import annotations

import torch

from pyroflows.nn.convnets import ConvResNet
from pyroflows.transforms.base import ConditionalFlowTransform, FlowTransform
from pyroflows.transforms.linear import InvertibleConv1x1
from pyroflows.transforms.normalization import ActNorm
from pyroflows.transforms.univariate import (
    RationalQuadraticSpline,
    ScaleShift,
    Shift,
    SigmoidScaleShift,
    UnivariateMap,
)

__all__ = [
    "ConditionalImageCoupling",
    "GlowStep",
    "ImageCoupling",
    "Squeeze",
    "Unsqueeze",
    "squeeze",
    "unsqueeze",
]


def _image_shape(name: str, shape) -> tuple[int, int, int]:
    shape = tuple(shape)
    if len(shape) != 3 or not all(isinstance(n, int) and n >= 1 for n in shape):
        raise ValueError(f"{name} must be an image shape (C, H, W) of positive ints, got {shape!r}")
    return shape


def squeeze(x: torch.Tensor, factor: int = 2) -> torch.Tensor:
    """Space to depth: ``(*, C, H, W) -> (*, C f^2, H / f, W / f)``."""
    *batch, c, h, w = x.shape
    n = len(batch)
    x = x.reshape(*batch, c, h // factor, factor, w // factor, factor)
    x = x.permute(*range(n), n, n + 2, n + 4, n + 1, n + 3)
    return x.reshape(*batch, c * factor * factor, h // factor, w // factor)


def unsqueeze(y: torch.Tensor, factor: int = 2) -> torch.Tensor:
    """Depth to space, the inverse of `squeeze`."""
    *batch, c, h, w = y.shape
    n = len(batch)
    y = y.reshape(*batch, c // factor**2, factor, factor, h, w)
    y = y.permute(*range(n), n, n + 3, n + 1, n + 4, n + 2)
    return y.reshape(*batch, c // factor**2, h * factor, w * factor)


class Squeeze(FlowTransform):
    """Space to depth (RealNVP, arXiv:1605.08803, sec. 3.6): each ``f x f``
    patch becomes ``f^2`` channels, ``(C, H, W) -> (C f^2, H/f, W/f)``.

    A permutation: log-det 0, both directions cheap.

    Examples:
        >>> layer = Squeeze((1, 4, 4))
        >>> layer(torch.arange(16.0).reshape(1, 4, 4))[:, 0, 0].tolist()
        [0.0, 1.0, 4.0, 5.0]
    """

    def __init__(self, input_shape: tuple[int, int, int], factor: int = 2) -> None:
        c, h, w = _image_shape("input_shape", input_shape)
        if h % factor or w % factor:
            raise ValueError(f"Squeeze by {factor} needs H and W divisible by {factor}, got shape {input_shape}")
        super().__init__((c, h, w), output_shape=(c * factor**2, h // factor, w // factor))
        self.factor = factor

    def _forward_and_log_det(self, x, context):
        return squeeze(x, self.factor), x.new_zeros(x.shape[:-3])

    def _inverse_and_log_det(self, y, context):
        return unsqueeze(y, self.factor), y.new_zeros(y.shape[:-3])


class Unsqueeze(FlowTransform):
    """Depth to space, ``(C f^2, H, W) -> (C, H f, W f)``: the inverse of
    `Squeeze` (the layer a base -> data stack ends with). Log-det 0.

    Examples:
        >>> Unsqueeze((4, 2, 2))(torch.zeros(4, 2, 2)).shape
        torch.Size([1, 4, 4])
    """

    def __init__(self, input_shape: tuple[int, int, int], factor: int = 2) -> None:
        c, h, w = _image_shape("input_shape", input_shape)
        if c % factor**2:
            raise ValueError(f"Unsqueeze by {factor} needs C divisible by {factor**2}, got shape {input_shape}")
        super().__init__((c, h, w), output_shape=(c // factor**2, h * factor, w * factor))
        self.factor = factor

    def _forward_and_log_det(self, x, context):
        return unsqueeze(x, self.factor), x.new_zeros(x.shape[:-3])

    def _inverse_and_log_det(self, y, context):
        return squeeze(y, self.factor), y.new_zeros(y.shape[:-3])


def _univariate(transform: str | UnivariateMap, max_log_scale: float | None) -> UnivariateMap:
    if isinstance(transform, UnivariateMap):
        return transform
    maps = {
        "affine": lambda: ScaleShift(max_log_scale),
        "affine-sigmoid": SigmoidScaleShift,
        "additive": Shift,
        "spline": RationalQuadraticSpline,
    }
    if transform not in maps:
        raise ValueError(f"transform must be one of {sorted(maps)} or a UnivariateMap, got {transform!r}")
    return maps[transform]()


class ImageCoupling(FlowTransform):
    """Coupling layer for images with a channel or checkerboard mask.

    Elements marked by the mask pass through and feed a `ConvResNet`
    (zero-initialised last layer: the identity at initialisation) whose output
    parametrises an elementwise map of the others:

    $$
    y_A = x_A, \\qquad y_B = \\tau(x_B;\\, \\theta(x_A, c)), \\qquad
    \\log|\\det J| = \\sum_{i \\in B} \\log \\tau'(x_i)
    $$

    ``transform`` is ``"affine"`` (RealNVP, log-scale soft-clamped to
    ``max_log_scale``), ``"affine-sigmoid"`` (Glow's sigmoid scale,
    `SigmoidScaleShift`),
    ``"additive"`` (NICE), ``"spline"`` or any
    `UnivariateMap`. Masks:
    ``"channel"`` (half of the channels; needs ``C >= 2``) or
    ``"checkerboard"`` (alternate pixels, all channels); ``parity`` flips
    which half is copied. Both directions cost one conditioner pass.

    Args:
        input_shape: ``(C, H, W)``.
        context_dim: a context vector size or a feature-map shape
            ``(C_c, H, W)`` read by the conditioner (see `ConvResNet`).

    Examples:
        >>> layer = ImageCoupling((4, 8, 8), mask="checkerboard", hidden_channels=16)
        >>> x = torch.randn(2, 4, 8, 8)
        >>> bool((layer(x) == x).all())  # identity at initialisation
        True
    """

    def __init__(
        self,
        input_shape: tuple[int, int, int],
        transform: str | UnivariateMap = "affine",
        mask: str = "channel",
        parity: int = 0,
        hidden_channels: int = 64,
        num_blocks: int = 1,
        context_dim: int | tuple[int, ...] | None = None,
        max_log_scale: float | None = 3.0,
    ) -> None:
        c, h, w = _image_shape("input_shape", input_shape)
        super().__init__((c, h, w), context_dim)
        if mask not in ("channel", "checkerboard"):
            raise ValueError(f"mask must be 'channel' or 'checkerboard', got {mask!r}")
        if mask == "channel" and c < 2:
            raise ValueError(f"a channel mask needs at least 2 channels, got input_shape {input_shape}")
        if parity not in (0, 1):
            raise ValueError(f"parity must be 0 or 1, got {parity!r}")
        self.univariate = _univariate(transform, max_log_scale)
        self.mask, self.parity = mask, parity
        if mask == "channel":
            first = c // 2
            self.sizes = (first, c - first)
            copied, changed = (self.sizes[0], self.sizes[1]) if parity == 0 else (self.sizes[1], self.sizes[0])
        else:
            copied = changed = c
            grid = (torch.arange(h)[:, None] + torch.arange(w)[None, :] + parity) % 2 == 0
            self.register_buffer("copied", grid.expand(c, h, w).clone())
        self.num_changed = changed
        self.net = ConvResNet(copied, changed * self.univariate.num_params, hidden_channels, num_blocks, context_dim)

    def _params(self, part, context):
        batch = part.shape[:-3]
        flat = part.reshape(-1, *part.shape[-3:])
        if context is not None:
            context = context.reshape(-1, *self.context_shape)
        out = self.net(flat, context)
        h, w = out.shape[-2:]
        out = out.view(*batch, self.num_changed, self.univariate.num_params, h, w)
        return out.movedim(-3, -1)

    def _couple(self, value, context, inverse):
        if context is not None:  # broadcast batch dims of input and context
            batch = torch.broadcast_shapes(value.shape[:-3], context.shape[: context.dim() - len(self.context_shape)])
            value = value.expand(*batch, *value.shape[-3:])
            context = context.expand(*batch, *self.context_shape)
        step = self.univariate.inverse if inverse else self.univariate.forward
        if self.mask == "channel":
            first, second = value.split(self.sizes, dim=-3)
            copied, changed = (first, second) if self.parity == 0 else (second, first)
            out, log_det = step(changed, self._params(copied, context))
            parts = (copied, out) if self.parity == 0 else (out, copied)
            return torch.cat(parts, dim=-3), log_det.flatten(-3).sum(-1)
        out, log_det = step(value, self._params(value * self.copied, context))
        return torch.where(self.copied, value, out), log_det.masked_fill(self.copied, 0.0).flatten(-3).sum(-1)

    def _forward_and_log_det(self, x, context):
        return self._couple(x, context, inverse=False)

    def _inverse_and_log_det(self, y, context):
        return self._couple(y, context, inverse=True)


class ConditionalImageCoupling(ConditionalFlowTransform):
    """`ImageCoupling` whose conditioner also reads a context (a vector
    or a feature map); ``condition(c)`` binds it."""

    def __init__(self, input_shape: tuple[int, int, int], context_dim: int | tuple[int, ...], **options) -> None:
        super().__init__(ImageCoupling(input_shape, context_dim=context_dim, **options))


class GlowStep(FlowTransform):
    """One step of Glow (Kingma & Dhariwal, arXiv:1807.03039): ActNorm, an
    invertible 1x1 convolution and an affine coupling, in the data -> base
    direction (the inverse here), so the forward runs them in reverse.

    $$
    \\log|\\det J| = H W \\sum_c (s^{\\mathrm{act}}_c + s^{\\mathrm{LU}}_c)
    + \\sum_{i \\in B} \\log \\tau'(\\cdot)
    $$

    Both directions cost one conditioner pass; ActNorm initialises from the
    first batch it sees. In the data -> base direction ActNorm and the 1x1
    convolution run as one affine map per pixel.

    Examples:
        >>> step = GlowStep((4, 4, 4), hidden_channels=8)
        >>> x, log_det = step.inverse_and_log_det(torch.randn(16, 4, 4, 4))
        >>> x.shape, log_det.shape
        (torch.Size([16, 4, 4, 4]), torch.Size([16]))
    """

    def __init__(
        self,
        input_shape: tuple[int, int, int],
        hidden_channels: int = 64,
        num_blocks: int = 0,
        transform: str | UnivariateMap = "affine",
        mask: str = "channel",
        parity: int = 0,
        context_dim: int | tuple[int, ...] | None = None,
        seed: int | None = None,
    ) -> None:
        shape = _image_shape("input_shape", input_shape)
        super().__init__(shape, context_dim)
        self.actnorm = ActNorm(shape)
        self.conv = InvertibleConv1x1(shape, seed=seed)
        self.coupling = ImageCoupling(shape, transform, mask, parity, hidden_channels, num_blocks, context_dim)

    @property
    def layers(self) -> tuple[FlowTransform, ...]:
        """The three layers in base -> data order."""
        return (self.coupling, self.conv, self.actnorm)

    def _forward_and_log_det(self, x, context):
        total = 0.0
        for layer in self.layers:
            x, log_det = layer._forward_and_log_det(x, context)
            total = total + log_det
        return x, total

    def _inverse_and_log_det(self, y, context):
        act, conv = self.actnorm, self.conv
        if not act.initialized:
            y, log_det = act._inverse_and_log_det(y, context)
            y, conv_log_det = conv._inverse_and_log_det(y, context)
        else:  # V ((y - b) e^{-s}) = M y - M b with M = V diag(e^{-s})
            matrix = conv.weight() * torch.exp(-act.log_scale).view(1, -1)
            bias = -(matrix @ act.shift.view(-1, 1))
            flat = y.reshape(*y.shape[:-3], y.shape[-3], conv.pixels)
            y = (torch.matmul(matrix, flat) + bias).view(y.shape)
            log_det = act._log_det(y)
            conv_log_det = (-conv.pixels * conv.log_diag.sum()).expand(log_det.shape)
        x, coupling_log_det = self.coupling._inverse_and_log_det(y, context)
        return x, log_det + conv_log_det + coupling_log_det
