"""A guide's map from base draws to flat latents as a torch ``Transform``."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.distributions import Transform, constraints

__all__ = ["GuideTransform"]


class GuideTransform(Transform):
    """Wraps ``base_to_latent: eps -> (z, log|dz/d eps|)`` (both (..., D) in,
    (..., D) and (...) out) as a bijective ``Transform`` on vectors, for
    ``AutoContinuous.get_posterior`` and Pyro's ``NeuTraReparam``. Sampling
    direction only: the inverse is not available (autoregressive layers in
    IAF mode invert in ``D`` passes), except for the last value (cached).
    """

    domain = constraints.real_vector
    codomain = constraints.real_vector
    bijective = True

    def __init__(self, base_to_latent: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]) -> None:
        super().__init__(cache_size=1)
        self.base_to_latent = base_to_latent

    def _call(self, x: torch.Tensor) -> torch.Tensor:
        return self.base_to_latent(x)[0]

    def _inverse(self, y: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError("the structured guide's map is evaluated in the sampling direction only")

    def log_abs_det_jacobian(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.base_to_latent(x)[1]
