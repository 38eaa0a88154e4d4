"""Plots for comparing posterior approximations."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

__all__ = ["pair_plot"]


def pair_plot(
    draws: Mapping[str, Mapping[str, np.ndarray]],
    names: Sequence[str],
    path: str | None = None,
    max_points: int = 1000,
    seed: int = 0,
):
    """Scatter every pair of ``names`` (off-diagonal) and overlay histograms
    (diagonal) for several sets of draws, e.g. ``{"flow": ..., "reference": ...}``.
    Saves to ``path`` if given; returns the matplotlib figure."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    k = len(names)
    if k < 2:
        raise ValueError(f"pair_plot needs at least 2 parameter names, got {list(names)}")
    rng = np.random.default_rng(seed)
    fig, axes = plt.subplots(k, k, figsize=(2.6 * k, 2.6 * k), squeeze=False)
    for label, d in draws.items():
        cols = [np.asarray(d[n]).reshape(-1) for n in names]
        idx = rng.choice(len(cols[0]), min(len(cols[0]), max_points), replace=False)
        for i in range(k):
            for j in range(k):
                ax = axes[i, j]
                if i == j:
                    ax.hist(cols[i], bins=40, density=True, histtype="step", label=label)
                elif i > j:
                    ax.scatter(cols[j][idx], cols[i][idx], s=2, alpha=0.35, label=label)
                else:
                    ax.axis("off")
    for i, n in enumerate(names):
        axes[-1, i].set_xlabel(n)
        axes[i, 0].set_ylabel(n)
    axes[0, 0].legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=110)
        plt.close(fig)
    return fig
