"""Pareto-smoothed importance sampling (PSIS) of raw log importance weights.

The smoothing and k-hat come from ArviZ (``az.psislw``, Vehtari et al.,
arXiv:1507.02646). Here, below `pyroflows.diagnostics`, so that `fit`'s stop
rule uses the same k-hat that the diagnostics report.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["PSIS", "psis"]


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
