"""Pareto-smoothed importance sampling (PSIS) of a guide against its model.

The smoothing and k-hat come from ArviZ (``az.psislw``, Vehtari et al.,
arXiv:1507.02646). k-hat < 0.7 means importance sampling from the guide is
reliable, and in practice that the guide is a good posterior approximation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from pyroflows.diagnostics.draws import GuideDraws, draw

__all__ = ["PSIS", "importance_resample", "psis", "psis_diagnostic"]


@dataclass
class PSIS:
    """``khat`` (Pareto shape), ``ess`` (importance-sampling effective sample
    size of the smoothed weights) and the smoothed normalised ``log_weights``."""

    khat: float
    ess: float
    log_weights: np.ndarray

    @property
    def reliable(self) -> bool:
        return self.khat < 0.7


def psis(log_weights: torch.Tensor | np.ndarray) -> PSIS:
    """Pareto-smooth raw log importance weights (one per draw)."""
    import arviz as az

    lw = np.asarray(log_weights.cpu() if isinstance(log_weights, torch.Tensor) else log_weights, dtype=np.float64)
    if lw.ndim != 1 or len(lw) < 2:
        raise ValueError(f"expected a 1-D array of at least 2 log weights, got shape {lw.shape}")
    if not np.isfinite(lw).all():
        raise ValueError(f"{np.sum(~np.isfinite(lw))} of {len(lw)} log weights are not finite")
    smoothed, khat = az.psislw(lw.copy())
    ess = float(1.0 / np.exp(2 * smoothed).sum())
    return PSIS(float(khat), ess, smoothed)


def psis_diagnostic(model, guide, *args, num_samples: int = 2000, **kwargs) -> PSIS:
    """PSIS of ``guide`` against ``model`` from ``num_samples`` guide draws."""
    return psis(draw(model, guide, *args, num_samples=num_samples, **kwargs).log_weights)


def importance_resample(
    draws: GuideDraws, num_samples: int | None = None, generator: torch.Generator | None = None
) -> dict[str, torch.Tensor]:
    """Resample guide draws with their Pareto-smoothed importance weights
    (sampling importance resampling), correcting part of the guide's error."""
    smoothed = psis(draws.log_weights)
    num = num_samples or draws.num_samples
    probs = torch.as_tensor(np.exp(smoothed.log_weights))
    idx = torch.multinomial(probs, num, replacement=True, generator=generator)
    return {k: v[idx] for k, v in draws.samples.items()}
