"""Jacobians of dense and convolutional networks as products of their factors, for log-dets
and traces without autograd walks (residual flows, continuous flows)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["ConvLinearization", "Linearization"]


class Linearization:
    """The Jacobian ``J = W_L D_{L-1} ... D_1 W_1`` of an MLP at a batch of
    points (``D_i`` the activations' slopes): products with ``J`` by matrix
    products, with no autograd graph of the network to walk. Both are
    differentiable in the point and the weights while grad mode is on."""

    def __init__(self, weights: list[torch.Tensor], slopes: list[torch.Tensor]) -> None:
        self.weights, self.slopes = weights, slopes

    def _apply(self, v: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return F.linear(v, weight)

    def _adjoint(self, w: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return w @ weight

    def vjp(self, w: torch.Tensor) -> torch.Tensor:
        """``w^T J`` for a batch of row vectors ``w``."""
        for weight, slope in zip(self.weights[:0:-1], self.slopes[::-1], strict=True):
            w = self._adjoint(w, weight) * slope
        return self._adjoint(w, self.weights[0])

    def jvp(self, v: torch.Tensor) -> torch.Tensor:
        """``J v`` for a batch of vectors ``v``."""
        for weight, slope in zip(self.weights[:-1], self.slopes, strict=True):
            v = self._apply(v, weight) * slope
        return self._apply(v, self.weights[-1])

    def matrix(self, batch_dim: int) -> torch.Tensor:
        """The Jacobians themselves, ``(*batch, out, in)`` for ``batch_dim`` batch
        dimensions (events flattened): one product per input coordinate."""
        shape = self.input_shape
        size = torch.Size(shape).numel()
        eye = torch.eye(size, dtype=self.weights[0].dtype, device=self.weights[0].device)
        columns = self.jvp(eye.view(size, *[1] * batch_dim, *shape))
        return columns.flatten(columns.dim() - len(shape)).movedim(0, -1)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (self.weights[0].shape[-1],)


class ConvLinearization(Linearization):
    """`Linearization` of a network of stride-1 "same" convolutions on
    images ``(*batch, C, H, W)``: products by convolutions and their transposes."""

    def __init__(self, weights: list[torch.Tensor], slopes: list[torch.Tensor], image_shape) -> None:
        super().__init__(weights, slopes)
        self._image_shape = tuple(image_shape)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self._image_shape

    def _apply(self, v, weight):
        out = F.conv2d(v.reshape(-1, *v.shape[-3:]), weight, padding=weight.shape[-1] // 2)
        return out.view(*v.shape[:-3], *out.shape[-3:])

    def _adjoint(self, w, weight):
        out = F.conv_transpose2d(w.reshape(-1, *w.shape[-3:]), weight, padding=weight.shape[-1] // 2)
        return out.view(*w.shape[:-3], *out.shape[-3:])
