"""Input validation switch and the checks shared by every layer.

Validation is on by default. Turn it off for speed once a model is known to be
well-formed.

Examples:
    >>> import pyroflows
    >>> pyroflows.set_validation(False)
    >>> pyroflows.validation_enabled()
    False
    >>> pyroflows.set_validation(True)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

_enabled = True


def set_validation(enabled: bool) -> None:
    """Switch shape and finiteness checks of flow inputs on or off."""
    global _enabled
    if not isinstance(enabled, bool):
        raise TypeError(f"set_validation expects a bool, got {type(enabled).__name__}")
    _enabled = enabled


def validation_enabled() -> bool:
    """Whether flow inputs are checked (the default)."""
    return _enabled


def check_event(name: str, value: torch.Tensor, event_shape: Sequence[int]) -> None:
    """Raise ``ValueError`` unless ``value`` has shape ``(*batch, *event_shape)`` and is finite."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    event_shape = tuple(event_shape)
    n = len(event_shape)
    if value.dim() < n or tuple(value.shape[value.dim() - n :]) != event_shape:
        raise ValueError(
            f"{name} must have shape (*batch, {', '.join(map(str, event_shape))}), got shape {tuple(value.shape)}"
        )
    if not torch.isfinite(value).all():
        bad = int((~torch.isfinite(value)).sum())
        raise ValueError(f"{name} must be finite, got {bad} non-finite value(s) (NaN or Inf)")


def check_dtype(name: str, value: torch.Tensor, expected: torch.dtype | None) -> None:
    """Raise ``TypeError`` unless ``value`` is floating point and, where the
    layer has floating parameters, of their ``expected`` dtype."""
    if not value.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor ({expected or 'float'}), got {value.dtype}")
    if expected is not None and value.dtype != expected:
        raise TypeError(
            f"{name} has dtype {value.dtype} but the layer's parameters are {expected}: "
            f"convert the input with .to({expected}) or the layer with .to({value.dtype})"
        )


def check_tolerances(rtol: float, atol: float) -> None:
    """Raise ``ValueError`` unless adaptive-solver tolerances are finite,
    non-negative and not both zero (torchdiffeq would assert mid-solve)."""
    for name, value in (("rtol", rtol), ("atol", atol)):
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value < float("inf"):
            raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    if rtol == 0 and atol == 0:
        raise ValueError("rtol and atol cannot both be 0: an adaptive solver could never accept a step")


def check_context(
    context: torch.Tensor | None,
    context_shape: Sequence[int] | None,
    batch_shape: torch.Size,
) -> None:
    """Raise ``ValueError`` unless ``context`` fits a layer whose context has ``context_shape``."""
    if context_shape is None:
        if context is not None:
            raise ValueError("this layer takes no context (context_dim=None), but a context was given")
        return
    shape = ", ".join(map(str, context_shape))
    if context is None:
        raise ValueError(
            f"this layer is conditional: call .condition(context) with a context of shape (*batch, {shape}) first"
        )
    check_event("context", context, context_shape)
    context_batch = context.shape[: context.dim() - len(context_shape)]
    try:
        torch.broadcast_shapes(batch_shape, context_batch)
    except RuntimeError:
        raise ValueError(
            f"context batch shape {tuple(context_batch)} does not broadcast with input batch shape {tuple(batch_shape)}"
        ) from None


def check_tokens(x, length: int, vocab_size: int | None = None) -> None:
    """Raise ``ValueError`` unless ``x`` is int64 ``(batch, length)`` (with tokens in
    ``[0, vocab_size)`` when ``vocab_size`` is given: that check reads every token)."""
    if not torch.is_tensor(x) or x.dtype != torch.long or x.dim() != 2 or x.shape[1] != length:
        got = f"{x.dtype} of shape {tuple(x.shape)}" if torch.is_tensor(x) else type(x).__name__
        raise ValueError(f"expected int64 tokens of shape (batch, {length}), got {got}")
    if vocab_size is not None and len(x) and (x.min() < 0 or x.max() >= vocab_size):
        raise ValueError(f"tokens must lie in [0, {vocab_size}), got values from {x.min().item()} to {x.max().item()}")
