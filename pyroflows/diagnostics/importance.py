"""Pareto-smoothed importance sampling (PSIS) of a guide against its model.

The smoothing and k-hat come from ArviZ (``az.psislw``, Vehtari et al.,
arXiv:1507.02646). k-hat < 0.7 means importance sampling from the guide is
reliable, and in practice that the guide is a good posterior approximation.
"""

from __future__ import annotations

import numpy as np
import torch

from pyroflows.diagnostics.draws import GuideDraws, draw
from pyroflows.infer.psis import PSIS, psis

__all__ = ["PSIS", "importance_resample", "psis", "psis_diagnostic"]


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
