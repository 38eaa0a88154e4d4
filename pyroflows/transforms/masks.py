"""Binary masks for coupling layers: ``True`` marks an element that is copied
unchanged and conditions the others."""

from __future__ import annotations

import torch


def alternating_mask(dim: int, parity: int = 0) -> torch.Tensor:
    """Every other element: ``[1, 0, 1, 0, ...]`` (``parity=0``) or its complement."""
    return torch.arange(dim) % 2 == parity


def half_mask(dim: int, first: bool = True) -> torch.Tensor:
    """The first ``dim // 2`` elements (``first=True``) or the rest."""
    mask = torch.arange(dim) < dim // 2
    return mask if first else ~mask


def checkerboard_mask(height: int, width: int, parity: int = 0) -> torch.Tensor:
    """A checkerboard over an ``height x width`` grid, flattened row-major."""
    rows = torch.arange(height)[:, None]
    cols = torch.arange(width)[None, :]
    return ((rows + cols) % 2 == parity).reshape(-1)


def resolve_mask(mask: str | torch.Tensor, dim: int, parity: int = 0) -> torch.Tensor:
    """Turn ``"alternating"``, ``"half"`` or a boolean tensor into a valid mask."""
    if isinstance(mask, str):
        if mask == "alternating":
            mask = alternating_mask(dim, parity)
        elif mask == "half":
            mask = half_mask(dim, first=parity == 0)
        else:
            raise ValueError(f"mask must be 'alternating', 'half' or a bool tensor, got {mask!r}")
    mask = torch.as_tensor(mask)
    if mask.shape != (dim,):
        raise ValueError(f"mask must have shape ({dim},), got {tuple(mask.shape)}")
    mask = mask.bool()
    if mask.all() or not mask.any():
        raise ValueError("mask must mark at least one element as copied and one as transformed")
    return mask
