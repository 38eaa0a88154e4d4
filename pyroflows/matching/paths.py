"""Affine probability paths ``x_t = alpha_t x_1 + sigma_t x_0`` (t = 0 noise, t = 1 data).

The conditional velocity target is ``u_t = alpha'_t x_1 + sigma'_t x_0``
(Lipman et al. 2022, arXiv:2210.02747; Tong et al. 2023, arXiv:2302.00482).

Examples:
    >>> path = AffinePath(CondOT())
    >>> x_t, u_t = path.sample(torch.zeros(2), torch.ones(2), torch.tensor(0.25))
    >>> x_t.tolist(), u_t.tolist()
    ([0.25, 0.25], [1.0, 1.0])
"""

from __future__ import annotations

import math

import torch

__all__ = ["AffinePath", "CondOT", "Cosine", "Scheduler", "VariancePreserving"]


class Scheduler:
    """``alpha_t``, ``sigma_t`` and their time derivatives, for ``t`` in [0, 1]."""

    def __call__(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Returns ``(alpha_t, sigma_t, d alpha_t / dt, d sigma_t / dt)``."""
        raise NotImplementedError

    def interpolate(self, x_0: torch.Tensor, x_1: torch.Tensor, t: torch.Tensor):
        """``(x_t, u_t)`` for ``t`` broadcastable against the samples."""
        alpha, sigma, d_alpha, d_sigma = self(t.to(x_1))
        return alpha * x_1 + sigma * x_0, d_alpha * x_1 + d_sigma * x_0


class CondOT(Scheduler):
    """Conditional optimal transport (linear): ``alpha_t = t``,
    ``sigma_t = 1 - (1 - sigma_min) t``. ``sigma_min = 0`` gives rectified flow's straight lines."""

    def __init__(self, sigma_min: float = 0.0) -> None:
        if not 0.0 <= sigma_min < 1.0:
            raise ValueError(f"sigma_min must be in [0, 1), got {sigma_min}")
        self.sigma_min = sigma_min

    def __call__(self, t):
        one = torch.ones_like(t)
        return t, 1 - (1 - self.sigma_min) * t, one, -(1 - self.sigma_min) * one

    def interpolate(self, x_0, x_1, t):  # the same formulas in three fused operations (the common case)
        shrunk = x_0 * (1 - self.sigma_min)
        return torch.lerp(shrunk, x_1, t.to(x_1)) + self.sigma_min * x_0, x_1 - shrunk


class Cosine(Scheduler):
    """``alpha_t = sin(pi t / 2)``, ``sigma_t = cos(pi t / 2)`` (variance preserving, closed form)."""

    def __call__(self, t):
        half_pi = math.pi / 2
        return (half_pi * t).sin(), (half_pi * t).cos(), half_pi * (half_pi * t).cos(), -half_pi * (half_pi * t).sin()


class VariancePreserving(Scheduler):
    """The VP diffusion path (Song et al. 2021) in flow-matching time:
    ``alpha_t = exp(-T(1 - t) / 2)`` with ``T(s) = beta_min s + (beta_max - beta_min) s^2 / 2``,
    ``sigma_t = sqrt(1 - alpha_t^2)``."""

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0) -> None:
        if not 0.0 < beta_min < beta_max:
            raise ValueError(f"need 0 < beta_min < beta_max, got {beta_min}, {beta_max}")
        self.beta_min, self.beta_max = beta_min, beta_max

    def __call__(self, t):
        s = 1 - t
        big_t = self.beta_min * s + 0.5 * (self.beta_max - self.beta_min) * s**2
        alpha = torch.exp(-0.5 * big_t)
        d_alpha = 0.5 * alpha * (self.beta_min + (self.beta_max - self.beta_min) * s)  # d/dt = -d/ds
        sigma = (1 - alpha**2).clamp(min=1e-12).sqrt()
        return alpha, sigma, d_alpha, -alpha * d_alpha / sigma


class AffinePath:
    """Samples ``x_t`` and the conditional velocity ``u_t`` for pairs ``(x_0, x_1)``."""

    def __init__(self, scheduler: Scheduler | None = None) -> None:
        if scheduler is not None and not isinstance(scheduler, Scheduler):
            raise TypeError(f"scheduler must be a Scheduler, got {type(scheduler).__name__}")
        self.scheduler = scheduler or CondOT()

    def sample(self, x_0: torch.Tensor, x_1: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``t`` has the batch shape of ``x_0`` (or is a scalar); returns ``(x_t, u_t)``."""
        if x_0.shape != x_1.shape:
            raise ValueError(f"x_0 and x_1 must have the same shape, got {tuple(x_0.shape)} and {tuple(x_1.shape)}")
        t = t.reshape(t.shape + (1,) * (x_1.dim() - t.dim())) if t.dim() else t
        return self.scheduler.interpolate(x_0, x_1, t)
