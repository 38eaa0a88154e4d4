"""The transform contract every pyroflows layer follows.

A layer subclasses `FlowTransform` and writes its map once, as two fused
methods that return the output *and* the forward log-determinant:

* ``_forward_and_log_det(x, context) -> (y, log|det dy/dx|)``
* ``_inverse_and_log_det(y, context) -> (x, log|det dy/dx|)``

Forward is base -> data (the sampling direction, as in torch and Pyro). The
base class owns the only cache: the last ``(x, y, log_det)`` triple. A call is
served from it only while the layer's parameters and buffers are unchanged
(their version counters are part of the key) and no backward pass has gone
through the cached tensors, so results never go stale after an optimiser step,
a graph freed by a backward pass is never served again, and users never call
``clear_cache()``. This lets ``TransformedDistribution.log_prob`` run one
conditioner pass per layer and lets ``rsample`` followed by ``log_prob`` skip
the inverse. A cached result shares its graph: two calls on the *same* input
tensor before any backward pass (``log_prob(y)`` twice) return results on one
graph, so backward through both needs ``retain_graph=True`` on the first, or
pass ``y.clone()`` the second time.
"""

from __future__ import annotations

import itertools
import weakref
from typing import NamedTuple

import torch
from pyro.distributions.conditional import ConditionalTransformModule
from pyro.distributions.torch_transform import TransformModule
from torch.distributions import Transform, constraints

from pyroflows.validation import check_context, check_dtype, check_event, validation_enabled


def _context_shape(context_dim) -> torch.Size | None:
    if context_dim is None:
        return None
    shape = (context_dim,) if isinstance(context_dim, int) else context_dim
    if not isinstance(shape, tuple) or not shape or not all(isinstance(n, int) and n >= 1 for n in shape):
        raise ValueError(f"context_dim must be a positive int, a tuple of positive ints or None, got {context_dim!r}")
    return torch.Size(shape)


class _Entry(NamedTuple):
    x: torch.Tensor
    y: torch.Tensor
    log_det: torch.Tensor
    key: tuple
    serial: int


_serials = itertools.count()


def _state_key(kernel: FlowTransform) -> tuple:
    """What must be unchanged for a cached result to stay valid."""
    return (torch.is_grad_enabled(), *[t._version for t in kernel._state_tensors()])


class CachedBijection:
    """Cache and validation shared by layers and by layers bound to a context.

    An entry is served while the kernel's parameters, buffers and grad mode
    are unchanged and no backward pass has gone through its tensors (a
    gradient hook drops it), so a graph freed by a backward pass is never
    served again (results served before that backward share its graph).
    """

    _entry: _Entry | None = None

    def __getstate__(self):
        # The cache holds graph tensors with hooks: never pickle it.
        state = dict(super().__getstate__())
        state.pop("_entry", None)
        return state

    def _kernel_and_context(self) -> tuple[FlowTransform, torch.Tensor | None]:
        raise NotImplementedError

    def _lookup(self, kernel: FlowTransform) -> _Entry | None:
        entry = self._entry
        if entry is not None and entry.key == _state_key(kernel):
            return entry
        return None

    def _store(self, kernel: FlowTransform, x, y, log_det) -> None:
        serial = next(_serials)
        self._entry = _Entry(x, y, log_det, _state_key(kernel), serial)
        # The hook holds no strong reference: a cycle through the graph would
        # keep every step's tensors alive until the garbage collector ran.
        holder = weakref.ref(self)

        def drop(_grad):
            owner = holder()
            if owner is not None and owner._entry is not None and owner._entry.serial == serial:
                owner._entry = None

        for tensor in (x, y, log_det):
            if tensor.requires_grad:
                tensor.register_hook(drop)

    def _map(self, value: torch.Tensor, inverse: bool) -> torch.Tensor:
        kernel, context = self._kernel_and_context()
        entry = self._lookup(kernel)
        if entry is not None:
            if value is (entry.y if inverse else entry.x):
                return entry.x if inverse else entry.y
            if value is (entry.x if inverse else entry.y):
                return entry.y if inverse else entry.x
        if validation_enabled():
            kernel._validate(value, context, "y" if inverse else "x")
        if inverse:
            x, log_det = kernel._run(value, context, inverse=True)
            self._store(kernel, x, value, log_det)
            return x
        y, log_det = kernel._run(value, context, inverse=False)
        self._store(kernel, value, y, log_det)
        return y

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self._map(x, inverse=False)

    def _inv_call(self, y: torch.Tensor) -> torch.Tensor:
        return self._map(y, inverse=True)

    def log_abs_det_jacobian(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        kernel, context = self._kernel_and_context()
        entry = self._lookup(kernel)
        if entry is not None and entry.x is x and entry.y is y:
            return entry.log_det
        if validation_enabled():
            kernel._validate(x, context, "x")
        return kernel._run(x, context, inverse=False)[1]

    def inverse_and_log_det(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x = f^{-1}(y)`` and the forward log-det at ``x``, bypassing the cache."""
        kernel, context = self._kernel_and_context()
        return kernel.inverse_and_log_det(y, context)

    def clear_cache(self) -> None:
        """Drop the cached triple (never needed for correctness)."""
        self._entry = None

    def forward_shape(self, shape):
        kernel, _ = self._kernel_and_context()
        n = len(kernel.event_shape)
        return torch.Size((*shape[: len(shape) - n], *kernel.output_shape))

    def inverse_shape(self, shape):
        kernel, _ = self._kernel_and_context()
        n = len(kernel.output_shape)
        return torch.Size((*shape[: len(shape) - n], *kernel.event_shape))


class FlowTransform(CachedBijection, TransformModule):
    """Base class of every pyroflows layer: a Pyro ``TransformModule``.

    Args:
        event_shape: shape of one input, e.g. ``(input_dim,)`` or ``(C, H, W)``.
        context_dim: size of the context vector for conditional layers (or
            the shape of a context tensor, e.g. a feature map ``(C, H, W)``),
            or ``None``. A conditional layer is used through `condition`
            (or wrapped in a `ConditionalFlowTransform`).
        output_shape: shape of one output when it differs from the input's
            (``Squeeze``).
    """

    domain = constraints.real_vector
    codomain = constraints.real_vector
    bijective = True

    def __init__(
        self,
        event_shape: tuple[int, ...],
        context_dim: int | tuple[int, ...] | None = None,
        output_shape: tuple[int, ...] | None = None,
    ) -> None:
        super().__init__(cache_size=0)
        self.context_dim = context_dim
        self.context_shape = _context_shape(context_dim)
        self._set_shapes(event_shape, output_shape)

    def _set_shapes(self, event_shape: tuple[int, ...], output_shape: tuple[int, ...] | None = None) -> None:
        self.event_shape = torch.Size(event_shape)
        self.output_shape = self.event_shape if output_shape is None else torch.Size(output_shape)
        if len(self.event_shape) != 1:  # images: the event is (C, H, W)
            self.domain = constraints.independent(constraints.real, len(self.event_shape))
        if len(self.output_shape) != 1:
            self.codomain = constraints.independent(constraints.real, len(self.output_shape))

    # -- what subclasses write -------------------------------------------------
    def _forward_and_log_det(self, x: torch.Tensor, context: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def _inverse_and_log_det(self, y: torch.Tensor, context: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    # -- public, uncached --------------------------------------------------------
    def forward_and_log_det(
        self, x: torch.Tensor, context: torch.Tensor | None = None, *, validate: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``y = f(x)`` and ``log|det df/dx|`` (batch shape), bypassing the cache.
        ``validate=False`` skips the input checks for this call (inner loops that
        checked their data once); `set_validation` does it globally."""
        if validate and validation_enabled():
            self._validate(x, context, "x")
        return self._run(x, context, inverse=False)

    def inverse_and_log_det(
        self, y: torch.Tensor, context: torch.Tensor | None = None, *, validate: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``x = f^{-1}(y)`` and the *forward* ``log|det df/dx|`` at that ``x``
        (``validate`` as in `forward_and_log_det`)."""
        if validate and validation_enabled():
            self._validate(y, context, "y")
        return self._run(y, context, inverse=True)

    def condition(self, context: torch.Tensor) -> ConditionedFlowTransform:
        """Bind a context of shape ``(*batch, *context_shape)``; returns a Pyro ``Transform``."""
        if self.context_dim is None:
            raise ValueError(f"{type(self).__name__} takes no context (context_dim=None)")
        return ConditionedFlowTransform(self, context)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self(x)

    # -- internals -------------------------------------------------------------
    _state: tuple[torch.Tensor, ...] | None = None

    def _state_tensors(self) -> tuple[torch.Tensor, ...]:
        """Parameters and buffers, listed once (walking the module tree is slow)."""
        if self._state is None:
            self._state = (*self.parameters(), *self.buffers())
        return self._state

    def _apply(self, fn, *args, **kwargs):  # .to(), .double(), ... may replace tensors
        self._state = None
        self._entry = None
        return super()._apply(fn, *args, **kwargs)

    def _run(self, value: torch.Tensor, context: torch.Tensor | None, inverse: bool):
        """The layer's map (or its inverse) and log-det; an empty batch gives
        empty results without running the layer (reductions, data-dependent
        initialisation and adaptive solvers have nothing to work on)."""
        shape_in, shape_out = self.event_shape, self.output_shape
        if inverse:
            shape_in, shape_out = shape_out, shape_in
        batch = value.shape[: value.dim() - len(shape_in)]
        if batch.numel() == 0:
            return value.new_zeros(batch + tuple(shape_out)), value.new_zeros(batch)
        if inverse:
            return self._inverse_and_log_det(value, context)
        return self._forward_and_log_det(value, context)

    def _kernel_and_context(self) -> tuple[FlowTransform, None]:
        return self, None

    def _validate(self, value: torch.Tensor, context: torch.Tensor | None, name: str) -> None:
        shape = self.output_shape if name == "y" else self.event_shape
        check_event(name, value, shape)
        dtype = self.parameter_dtype()
        check_dtype(name, value, dtype)
        check_context(context, self.context_shape, value.shape[: value.dim() - len(shape)])
        if context is not None:
            check_dtype("context", context, dtype)

    def parameter_dtype(self) -> torch.dtype | None:
        """The dtype of the layer's floating parameters and buffers (None: it has none)."""
        return next((t.dtype for t in self._state_tensors() if t.is_floating_point()), None)

    def extra_repr(self) -> str:
        extra = f"event_shape={tuple(self.event_shape)}"
        if self.output_shape != self.event_shape:
            extra += f", output_shape={tuple(self.output_shape)}"
        if self.context_dim is not None:
            extra += f", context_dim={self.context_dim}"
        return extra


class ConditionedFlowTransform(CachedBijection, Transform):
    """A conditional layer bound to one context; what ``condition`` returns."""

    bijective = True

    def __init__(self, kernel: FlowTransform, context: torch.Tensor) -> None:
        super().__init__(cache_size=0)
        if validation_enabled():
            check_event("context", context, kernel.context_shape)
        self.kernel = kernel
        self.context = context

    @property
    def domain(self):  # type: ignore[override]
        return self.kernel.domain

    @property
    def codomain(self):  # type: ignore[override]
        return self.kernel.codomain

    def _kernel_and_context(self) -> tuple[FlowTransform, torch.Tensor]:
        return self.kernel, self.context


class ConditionalFlowTransform(ConditionalTransformModule):
    """A Pyro ``ConditionalTransformModule`` around a conditional layer.

    The math lives in the wrapped layer (``kernel``); this class only binds a
    context, so it works in ``ConditionalTransformedDistribution`` and
    ``ConditionalComposeTransformModule``.
    """

    def __init__(self, kernel: FlowTransform) -> None:
        super().__init__()
        if kernel.context_dim is None:
            raise ValueError(f"{type(kernel).__name__} was built without context_dim")
        self.kernel = kernel

    @property
    def event_shape(self) -> torch.Size:
        return self.kernel.event_shape

    @property
    def context_dim(self) -> int | tuple[int, ...]:
        return self.kernel.context_dim

    def condition(self, context: torch.Tensor) -> ConditionedFlowTransform:
        return self.kernel.condition(context)
