"""Jacobians of MLPs as products of their factors, for log-dets and traces
without autograd walks (residual flows, continuous flows)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["Linearization"]


class Linearization:
    """The Jacobian ``J = W_L D_{L-1} ... D_1 W_1`` of an MLP at a batch of
    points (``D_i`` the activations' slopes): products with ``J`` by matrix
    products, with no autograd graph of the network to walk. Both are
    differentiable in the point and the weights while grad mode is on."""

    def __init__(self, weights: list[torch.Tensor], slopes: list[torch.Tensor]) -> None:
        self.weights, self.slopes = weights, slopes

    def vjp(self, w: torch.Tensor) -> torch.Tensor:
        """``w^T J`` for a batch of row vectors ``w``."""
        for weight, slope in zip(self.weights[:0:-1], self.slopes[::-1], strict=True):
            w = (w @ weight) * slope
        return w @ self.weights[0]

    def jvp(self, v: torch.Tensor) -> torch.Tensor:
        """``J v`` for a batch of vectors ``v``."""
        for weight, slope in zip(self.weights[:-1], self.slopes, strict=True):
            v = F.linear(v, weight) * slope
        return F.linear(v, self.weights[-1])

    def matrix(self, batch_dim: int) -> torch.Tensor:
        """The Jacobians themselves, ``(*batch, out, in)`` for ``batch_dim`` batch dimensions."""
        size = self.weights[0].shape[-1]
        eye = torch.eye(size, dtype=self.weights[0].dtype, device=self.weights[0].device)
        return self.jvp(eye.view(size, *[1] * batch_dim, size)).movedim(0, -1)
