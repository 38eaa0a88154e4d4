"""``FlowMatcher``: a velocity network with its path, coupling, sampler and exact likelihood.

t = 0 is the source (noise ``x_0``, a standard normal unless ``source`` is
given), t = 1 the data ``x_1``.

Examples:
    >>> from pyroflows.nn.velocity import TimeMLP
    >>> fm = FlowMatcher(TimeMLP(2, hidden_dims=(16,)), event_shape=(2,))
    >>> fm.loss(torch.randn(8, 2)).shape
    torch.Size([])
    >>> fm.sample(5, steps=10).shape
    torch.Size([5, 2])
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import pyro.distributions as dist
import torch
from torch import nn
from torchdiffeq import odeint

from pyroflows.distributions import FlowDistribution
from pyroflows.matching.couplings import Independent, PairCoupling
from pyroflows.matching.paths import AffinePath
from pyroflows.transforms.continuous import ADAPTIVE_SOLVERS, FIXED_STEP_SOLVERS, ContinuousFlow
from pyroflows.validation import check_dtype, check_tolerances

__all__ = ["FIXED_STEP", "FlowMatcher"]

FIXED_STEP = FIXED_STEP_SOLVERS  # one list of solvers, kept with ContinuousFlow


class _FlatVelocity(nn.Module):
    """The matcher's velocity on flattened samples, for `ContinuousFlow`."""

    def __init__(self, matcher: FlowMatcher, context: torch.Tensor | None, guidance: float) -> None:
        super().__init__()
        self.matcher, self.context, self.guidance = matcher, context, guidance

    def forward(self, x, t, context=None):
        shape = x.shape[:-1] + self.matcher.event_shape
        return self.matcher.velocity_at(x.reshape(shape), t, self.context, self.guidance).reshape(x.shape)


class FlowMatcher(nn.Module):
    """Conditional flow matching (Lipman et al. 2022; Tong et al. 2023) around any velocity network.

    Args:
        velocity: module ``v(x, t, context)`` returning the shape of ``x``.
        event_shape: shape of one sample.
        path: probability path (default: conditional OT with ``sigma_min = 0``).
        coupling: pairing of noise and data minibatches (default independent).
        context_dim: size of the context the network reads (class one-hot,
            features); ``None`` for unconditional models.
        guidance_dropout: probability of training on the null context, which
            enables classifier-free guidance at sampling. The network then
            reads ``context_dim + 1`` features (context and a presence flag).
        source: distribution of ``x_0`` (a Pyro distribution with this event
            shape); standard normal by default. Non-Gaussian sources work for
            sampling and, when they have a density, for likelihoods.
    """

    def __init__(
        self,
        velocity: nn.Module,
        event_shape: Sequence[int],
        path: AffinePath | None = None,
        coupling: PairCoupling | None = None,
        context_dim: int | None = None,
        guidance_dropout: float = 0.0,
        source: dist.Distribution | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(velocity, nn.Module):
            raise TypeError(f"velocity must be an nn.Module v(x, t, context), got {type(velocity).__name__}")
        if not 0.0 <= guidance_dropout < 1.0:
            raise ValueError(f"guidance_dropout must be in [0, 1), got {guidance_dropout}")
        if guidance_dropout and context_dim is None:
            raise ValueError("guidance_dropout needs a context_dim (guidance is over a context)")
        self.velocity = velocity
        self.event_shape = torch.Size(event_shape)
        self.path = path or AffinePath()
        self.coupling = coupling or Independent()
        self.context_dim, self.guidance_dropout = context_dim, guidance_dropout
        if source is not None and tuple(source.event_shape) != tuple(self.event_shape):
            raise ValueError(f"source event shape must be {tuple(self.event_shape)}, got {tuple(source.event_shape)}")
        self.source = source
        self.last_nfe = 0

    # -- inputs ----------------------------------------------------------------
    def _check(self, x: torch.Tensor, name: str) -> torch.Size:
        n = len(self.event_shape)
        if not torch.is_tensor(x):
            raise TypeError(f"{name} must be a tensor, got {type(x).__name__}")
        if x.dim() < n or x.shape[x.dim() - n :] != self.event_shape:
            raise ValueError(
                f"{name} must have shape (*batch, {', '.join(map(str, self.event_shape))}), got {tuple(x.shape)}"
            )
        parameter = next(self.velocity.parameters(), None)
        check_dtype(name, x, None if parameter is None else parameter.dtype)
        if not torch.isfinite(x).all():
            raise ValueError(f"{name} contains NaN or Inf")
        return x.shape[: x.dim() - n]

    def _context(self, context: torch.Tensor | None, batch: torch.Size, null: torch.Tensor | None = None):
        """The network's context: with guidance, ``[context * keep, keep]`` (``keep = 0`` is the null context)."""
        if self.context_dim is None:
            if context is not None:
                raise ValueError("this model has no context (context_dim=None), but a context was given")
            return None
        if context is None or context.shape[-1:] != (self.context_dim,):
            got = None if context is None else tuple(context.shape)
            raise ValueError(f"context must have shape (*batch, {self.context_dim}), got {got}")
        if not self.guidance_dropout:
            return context
        context = context.expand(*batch, self.context_dim)
        keep = torch.ones_like(context[..., :1]) if null is None else (~null)[..., None].to(context)
        return torch.cat([context * keep, keep], -1)

    def sample_source(self, shape: Sequence[int] | torch.Size, like: torch.Tensor | None = None) -> torch.Tensor:
        shape = torch.Size(shape)
        if self.source is not None:
            return self.source.sample(shape)
        ref = like if like is not None else self._reference()
        return torch.randn(shape + self.event_shape, dtype=ref.dtype, device=ref.device)

    def _reference(self) -> torch.Tensor:
        """A tensor with the model's dtype and device (default dtype, CPU without parameters)."""
        return next(self.velocity.parameters(), torch.empty(()))

    # -- training ----------------------------------------------------------------
    def loss(
        self,
        x_1: torch.Tensor,
        x_0: torch.Tensor | None = None,
        context: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        t: torch.Tensor | None = None,
        *,
        validate: bool = True,
    ) -> torch.Tensor:
        """Mean (over the batch) squared error between ``v(x_t, t)`` and the conditional velocity.

        ``x_0`` given: pairs are used as given (reflow); otherwise noise is drawn
        and re-paired by the coupling (``labels`` for label-aware couplings).
        ``t`` defaults to uniform draws; pass zeros to distil a one-step model.
        ``validate=False`` skips the input checks (a loop that checked its data once)."""
        if validate:
            self.validate_data(x_1, x_0, context)
        return self._loss(x_1, x_0, context, labels, t)

    def validate_data(self, x_1: torch.Tensor, x_0: torch.Tensor | None = None, context=None) -> None:
        """Raise ``ValueError`` unless ``x_1`` (and ``x_0``, ``context``) are finite batches of the right shapes."""
        batch = self._check(x_1, "x_1")
        if len(batch) != 1 or not batch[0]:
            raise ValueError(f"x_1 must be one non-empty batch of shape (batch, *event), got {tuple(x_1.shape)}")
        if x_0 is not None:
            self._check(x_0, "x_0")
            if x_0.shape != x_1.shape:
                raise ValueError(f"x_0 must have the shape of x_1 {tuple(x_1.shape)}, got {tuple(x_0.shape)}")
        self._context(context, batch)

    def _loss(self, x_1, x_0, context, labels, t) -> torch.Tensor:
        """`loss` without input checks (the training loop checks the data once)."""
        batch = x_1.shape[:1]
        if x_0 is None:
            x_0, x_1 = self.coupling.pair(self.sample_source(batch, x_1), x_1, labels)
        t = torch.rand(batch, dtype=x_1.dtype, device=x_1.device) if t is None else t
        x_t, u_t = self.path.sample(x_0, x_1, t)
        null = None
        if self.guidance_dropout:
            null = torch.rand(batch, device=x_1.device) < self.guidance_dropout
        v = self.velocity(x_t, t, self._context(context, batch, null))
        return (v - u_t).square().sum() / len(v)

    # -- sampling ------------------------------------------------------------------
    def velocity_at(self, x, t, context=None, guidance: float = 0.0) -> torch.Tensor:
        """The learned velocity; ``guidance = w`` gives ``(1 + w) v(x, t, c) - w v(x, t, null)``."""
        batch = x.shape[: x.dim() - len(self.event_shape)]
        v = self.velocity(x, t, self._context(context, batch))
        if guidance:
            if not self.guidance_dropout:
                raise ValueError("guidance needs a model trained with guidance_dropout > 0")
            null = torch.ones(batch, dtype=torch.bool, device=x.device)
            v = (1 + guidance) * v - guidance * self.velocity(x, t, self._context(context, batch, null))
        return v

    def sample(
        self,
        num_or_x_0: int | torch.Tensor,
        steps: int = 100,
        method: str = "euler",
        context: torch.Tensor | None = None,
        guidance: float = 0.0,
        rtol: float = 1e-5,
        atol: float = 1e-5,
        return_path: bool = False,
    ) -> torch.Tensor:
        """Integrate from ``x_0`` (or ``num`` source draws) to t = 1 without gradients.

        ``method``: ``"euler"``, ``"midpoint"``, ``"rk4"`` (``steps`` equal steps)
        or an adaptive solver such as ``"dopri5"`` (``rtol``/``atol``; see
        ``ADAPTIVE_SOLVERS`` in `pyroflows.transforms.continuous`). `last_nfe` holds the
        number of velocity evaluations. ``return_path`` returns all ``steps + 1``
        states of a fixed-step solve."""
        if isinstance(num_or_x_0, int):
            if num_or_x_0 < 1:
                raise ValueError(f"number of samples must be positive, got {num_or_x_0}")
            x_0 = self.sample_source((num_or_x_0,))
        else:
            self._check(num_or_x_0, "x_0")
            x_0 = num_or_x_0
        if method not in (*FIXED_STEP, *ADAPTIVE_SOLVERS):
            raise ValueError(f"method must be one of {(*FIXED_STEP, *ADAPTIVE_SOLVERS)}, got {method!r}")
        if method in FIXED_STEP and (not isinstance(steps, int) or steps < 1):
            raise ValueError(f"steps must be a positive int, got {steps!r}")
        if method in ADAPTIVE_SOLVERS:
            check_tolerances(rtol, atol)
        if not x_0.numel():  # nothing to integrate (an adaptive solver would fail on an empty state)
            self.last_nfe = 0
            return x_0.expand(steps + 1, *x_0.shape) if return_path else x_0.clone()
        nfe = 0

        def func(t, x):
            nonlocal nfe
            nfe += 1
            return self.velocity_at(x, t, context, guidance)

        with torch.no_grad():
            if method in ADAPTIVE_SOLVERS:
                times = torch.tensor([0.0, 1.0], dtype=x_0.dtype, device=x_0.device)
                path = odeint(func, x_0, times, method=method, rtol=rtol, atol=atol)
            else:
                times = torch.linspace(0.0, 1.0, steps + 1, dtype=x_0.dtype, device=x_0.device)
                path = odeint(func, x_0, times, method=method)
        self.last_nfe = nfe
        return path if return_path else path[-1]

    # -- likelihood ------------------------------------------------------------------
    def transform(
        self,
        context: torch.Tensor | None = None,
        guidance: float = 0.0,
        trace: str | None = None,
        method: str = "dopri5",
        rtol: float = 1e-5,
        atol: float = 1e-5,
        step_size: float | None = None,
    ) -> ContinuousFlow:
        """The model as a `ContinuousFlow` on flattened samples (base ->
        data), for a fixed ``context``. ``trace`` defaults to exact for at most
        8 dimensions, Hutchinson above."""
        if context is not None:
            self._context(context, context.shape[:-1])  # validates
        dim = math.prod(self.event_shape)
        trace = trace or ("exact" if dim <= 8 else "hutchinson")
        velocity = _FlatVelocity(self, context, guidance)
        return ContinuousFlow(
            dim, velocity=velocity, trace=trace, method=method, rtol=rtol, atol=atol, step_size=step_size
        )

    def distribution(self, context: torch.Tensor | None = None, **options) -> dist.Distribution:
        """A Pyro distribution over vector samples: ``log_prob`` by the
        instantaneous change of variables (with gradients), ``sample`` and
        ``rsample`` by one ODE solve. Options go to `transform`. The
        context's batch shape must broadcast to the values'."""
        if len(self.event_shape) != 1:
            raise ValueError(f"distribution() needs vector samples, event shape is {tuple(self.event_shape)}")
        return FlowDistribution(self._base(), self.transform(context, **options))

    def _base(self) -> dist.Distribution:
        if self.source is not None:
            return self.source
        ref = self._reference()
        zeros = torch.zeros(self.event_shape, dtype=ref.dtype, device=ref.device)
        return dist.Normal(zeros, torch.ones_like(zeros)).to_event(len(self.event_shape))

    def log_prob(self, x_1: torch.Tensor, context: torch.Tensor | None = None, **options) -> torch.Tensor:
        """Exact log-density of ``x_1`` (any event shape: flattened internally)."""
        batch = self._check(x_1, "x_1")
        if context is not None:
            batch = torch.broadcast_shapes(batch, context.shape[:-1])
            x_1 = x_1.expand(*batch, *self.event_shape)
        flow = self.transform(context, **options)
        x_0, log_det = flow.inverse_and_log_det(x_1.reshape(*batch, -1))
        base = self._base()
        x_0 = x_0.reshape(x_1.shape)
        return base.log_prob(x_0) - log_det

    def sample_and_log_prob(
        self, num: int, context: torch.Tensor | None = None, **options
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``num`` samples and their exact log-densities from one ODE solve (base -> data)."""
        if not isinstance(num, int) or num < 1:
            raise ValueError(f"number of samples must be a positive int, got {num!r}")
        x_0 = self.sample_source((num,))
        flow = self.transform(context, **options)
        x_1, log_det = flow.forward_and_log_det(x_0.reshape(num, -1))
        return x_1.reshape(x_0.shape), self._base().log_prob(x_0) - log_det
