"""Feeding a context to a network alongside its input."""

from __future__ import annotations

import torch

__all__ = ["concat_context"]


def concat_context(x: torch.Tensor, context: torch.Tensor | None) -> torch.Tensor:
    """``[x, context]`` on the last axis, batch shapes broadcast (``x`` itself without a context)."""
    if context is None:
        return x
    batch = torch.broadcast_shapes(x.shape[:-1], context.shape[:-1])
    return torch.cat([x.expand(*batch, x.shape[-1]), context.expand(*batch, context.shape[-1])], -1)
