"""Compare approximate posterior draws with reference (gold-standard) draws."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

__all__ = ["Comparison", "compare", "energy_distance"]


@dataclass
class Comparison:
    """Per-parameter standardised mean error ``|mean_q - mean_ref| / sd_ref``
    and ``sd_q / sd_ref``, and the whitened energy distance of the joints."""

    names: list[str]
    mean_error: np.ndarray
    sd_ratio: np.ndarray
    energy: float

    @property
    def max_mean_error(self) -> float:
        return float(self.mean_error.max())

    @property
    def max_log_sd_ratio(self) -> float:
        return float(np.abs(np.log(self.sd_ratio)).max())

    def passes(self, mean_tol: float = 0.1, log_sd_tol: float = 0.1) -> bool:
        return self.max_mean_error < mean_tol and self.max_log_sd_ratio < log_sd_tol

    def table(self) -> str:
        rows = [f"{'parameter':>14} {'mean err':>9} {'sd ratio':>9}"]
        rows += [
            f"{n:>14} {e:9.3f} {r:9.3f}" for n, e, r in zip(self.names, self.mean_error, self.sd_ratio, strict=True)
        ]
        return "\n".join(rows)


def _matrix(draws: Mapping[str, np.ndarray], names: list[str]) -> np.ndarray:
    missing = [n for n in names if n not in draws]
    if missing:
        raise ValueError(f"draws lack parameters {missing}; they have {sorted(draws)}")
    return np.stack([np.asarray(draws[n], dtype=np.float64).reshape(-1) for n in names], -1)


def energy_distance(x: np.ndarray, y: np.ndarray) -> float:
    """Energy distance ``2 E|X-Y| - E|X-X'| - E|Y-Y'|`` between two samples (rows)."""

    def mean_dist(a, b):
        return np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)).mean()

    return float(2 * mean_dist(x, y) - mean_dist(x, x) - mean_dist(y, y))


def compare(
    draws: Mapping[str, np.ndarray],
    reference: Mapping[str, np.ndarray],
    max_energy_draws: int = 1000,
    seed: int = 0,
) -> Comparison:
    """Compare ``draws`` with ``reference`` on the reference's parameters.

    Both map parameter names to 1-D arrays of draws. The energy distance is
    computed after whitening both with the reference mean and covariance, on
    at most ``max_energy_draws`` draws of each.

    Examples:
        >>> rng = np.random.default_rng(0)
        >>> c = compare({"a": rng.normal(size=4000)}, {"a": rng.normal(size=4000)})
        >>> c.passes()
        True
    """
    names = list(reference)
    q, ref = _matrix(draws, names), _matrix(reference, names)
    mean, sd = ref.mean(0), ref.std(0)
    mean_error = np.abs(q.mean(0) - mean) / sd
    sd_ratio = q.std(0) / sd
    rng = np.random.default_rng(seed)
    chol = np.linalg.cholesky(np.atleast_2d(np.cov(ref, rowvar=False)))
    whiten = lambda a: np.linalg.solve(chol, (a - mean).T).T  # noqa: E731
    qs = q[rng.choice(len(q), min(len(q), max_energy_draws), replace=False)]
    rs = ref[rng.choice(len(ref), min(len(ref), max_energy_draws), replace=False)]
    return Comparison(names, mean_error, sd_ratio, energy_distance(whiten(qs), whiten(rs)))
