"""Sample-quality metrics."""

from __future__ import annotations

import torch

__all__ = ["wasserstein2"]


def wasserstein2(x: torch.Tensor, y: torch.Tensor) -> float:
    """Exact 2-Wasserstein distance between two empirical distributions (rows,
    uniform weights), by POT's network-simplex solver: ``sqrt(min E|x - y|^2)``.

    Examples:
        >>> x = torch.randn(100, 2)
        >>> round(wasserstein2(x, x + torch.tensor([3.0, 4.0])), 6)
        5.0
    """
    import ot

    if x.dim() != 2 or y.dim() != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"expected two (n, d) sample matrices with equal d, got {tuple(x.shape)} and {tuple(y.shape)}")
    a, b = x.detach().double().cpu(), y.detach().double().cpu()
    cost = torch.cdist(a, b).pow(2)
    weights_a = torch.full((len(a),), 1.0 / len(a), dtype=torch.float64)
    weights_b = torch.full((len(b),), 1.0 / len(b), dtype=torch.float64)
    return float(ot.emd2(weights_a, weights_b, cost, numItermax=10_000_000)) ** 0.5
