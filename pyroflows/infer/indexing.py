"""Integer-array indexing of one dimension, run as ``index_select``.

Hierarchical models gather per-member latents per row, ``a[..., group]``.
On CPU, torch runs that advanced indexing 4-5 times slower than the
equivalent ``index_select`` (and its backward, an accumulating
``index_put``, 4 times slower than ``index_add``); a Newton step pays for
it a dozen times. `IndexSelectMode` rewrites ``x[idx]`` and
``x[..., idx]`` with an integer tensor ``idx`` into ``index_select``
(negative indices wrapped, out-of-range ones still an error); every other
key goes to torch unchanged.
"""

from __future__ import annotations

import torch
from torch.overrides import TorchFunctionMode

__all__ = ["IndexSelectMode"]

_GETITEM = torch.Tensor.__getitem__
_INDEX_DTYPES = (torch.int64, torch.int32)


class IndexSelectMode(TorchFunctionMode):
    """Within ``with IndexSelectMode():``, ``x[idx]`` and ``x[..., idx]``
    (``idx`` an integer tensor) run as ``index_select`` (same values, shapes
    and gradients)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is _GETITEM and not kwargs and type(args[0]) is torch.Tensor:
            out = _index_select(*args)
            if out is not None:
                return out
        return func(*args, **(kwargs or {}))


def _index_select(tensor: torch.Tensor, key) -> torch.Tensor | None:
    """``tensor[key]`` through ``index_select``, or ``None`` for other keys."""
    if isinstance(key, torch.Tensor):
        dim, index = 0, key
    elif isinstance(key, tuple) and len(key) == 2 and key[0] is Ellipsis and isinstance(key[1], torch.Tensor):
        dim, index = -1, key[1]
    else:
        return None
    if (
        index.dtype not in _INDEX_DTYPES
        or index.dim() == 0
        or tensor.dim() == 0
        or type(index) is not torch.Tensor
        or index.device != tensor.device
    ):
        return None
    size = tensor.shape[dim]
    flat = index.reshape(-1)
    flat = torch.where(flat < 0, flat + size, flat)
    out = tensor.index_select(dim, flat)
    if index.dim() == 1:
        return out
    return out.reshape(index.shape + tensor.shape[1:] if dim == 0 else tensor.shape[:-1] + index.shape)
