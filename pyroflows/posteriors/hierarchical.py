"""Hierarchical regression: the model Pyro users write every day.

Varying intercepts and slopes by group (the radon / eight-schools shape):

$$
\\mu_a, \\mu_b \\sim N(0, 5), \\quad \\sigma_a, \\sigma_b, \\sigma \\sim \\mathrm{HalfNormal}(2.5), \\\\
a_j \\sim N(\\mu_a, \\sigma_a), \\quad b_j \\sim N(\\mu_b, \\sigma_b), \\quad
y_n \\sim N(a_{g(n)} + b_{g(n)} x_n, \\sigma).
$$

`regression` takes long-format data (one row per observation, a group
index per row) in a centred or non-centred form; `grouped_regression`
takes rows grouped as a (groups, rows) array and can subsample groups, for
data sets too large for one step.

Examples:
    >>> data = simulate(num_groups=5, rows_per_group=4)
    >>> data["x"].shape, data["group"].shape
    (torch.Size([20]), torch.Size([20]))
"""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import torch

__all__ = [
    "GLOBALS",
    "TRUTH",
    "collapsed_regression",
    "group_posterior",
    "group_statistics",
    "grouped_regression",
    "regression",
    "simulate",
]

GLOBALS = ("mu_a", "mu_b", "sigma_a", "sigma_b", "sigma")
TRUTH = {"mu_a": 1.0, "mu_b": -0.5, "sigma_a": 0.5, "sigma_b": 0.3, "sigma": 0.5}


def _globals(like: torch.Tensor):
    zero = like.new_zeros(())
    mu_a = pyro.sample("mu_a", dist.Normal(zero, 5.0))
    mu_b = pyro.sample("mu_b", dist.Normal(zero, 5.0))
    sigma_a = pyro.sample("sigma_a", dist.HalfNormal(zero + 2.5))
    sigma_b = pyro.sample("sigma_b", dist.HalfNormal(zero + 2.5))
    sigma = pyro.sample("sigma", dist.HalfNormal(zero + 2.5))
    return mu_a, mu_b, sigma_a, sigma_b, sigma


def _group_effects(mu_a, mu_b, sigma_a, sigma_b, centered: bool):
    if centered:
        return pyro.sample("a", dist.Normal(mu_a, sigma_a)), pyro.sample("b", dist.Normal(mu_b, sigma_b))
    a_raw = pyro.sample("a_raw", dist.Normal(torch.zeros_like(mu_a), 1.0))
    b_raw = pyro.sample("b_raw", dist.Normal(torch.zeros_like(mu_b), 1.0))
    return pyro.deterministic("a", mu_a + sigma_a * a_raw), pyro.deterministic("b", mu_b + sigma_b * b_raw)


def regression(
    x: torch.Tensor, group: torch.Tensor, num_groups: int, y: torch.Tensor | None = None, centered: bool = True
) -> None:
    """Long format: ``x``, ``group`` and ``y`` have one entry per row."""
    mu_a, mu_b, sigma_a, sigma_b, sigma = _globals(x)
    with pyro.plate("groups", num_groups):
        a, b = _group_effects(mu_a, mu_b, sigma_a, sigma_b, centered)
    with pyro.plate("data", len(x)):
        pyro.sample("y", dist.Normal(a[..., group] + b[..., group] * x, sigma), obs=y)


def grouped_regression(
    x: torch.Tensor, y: torch.Tensor | None = None, subsample_size: int | None = None, centered: bool = False
) -> None:
    """Rows grouped by group: ``x`` and ``y`` are (groups, rows per group);
    ``subsample_size`` groups (with all their rows) per step."""
    num_groups, rows = x.shape
    mu_a, mu_b, sigma_a, sigma_b, sigma = _globals(x)
    with pyro.plate("groups", num_groups, subsample_size=subsample_size, dim=-2) as index:
        a, b = _group_effects(mu_a, mu_b, sigma_a, sigma_b, centered)
        with pyro.plate("rows", rows, dim=-1):
            obs = None if y is None else y[index]
            pyro.sample("y", dist.Normal(a + b * x[index], sigma), obs=obs)


def simulate(num_groups: int, rows_per_group: int, seed: int = 0, dtype: torch.dtype = torch.float32) -> dict:
    """Data from `TRUTH`: ``x``, ``group``, ``y`` (long format),
    ``x_grouped``, ``y_grouped`` (groups, rows) and the true ``a``, ``b``."""
    gen = torch.Generator().manual_seed(seed)
    a = TRUTH["mu_a"] + TRUTH["sigma_a"] * torch.randn(num_groups, 1, generator=gen, dtype=torch.float64)
    b = TRUTH["mu_b"] + TRUTH["sigma_b"] * torch.randn(num_groups, 1, generator=gen, dtype=torch.float64)
    x = torch.randn(num_groups, rows_per_group, generator=gen, dtype=torch.float64)
    y = a + b * x + TRUTH["sigma"] * torch.randn(num_groups, rows_per_group, generator=gen, dtype=torch.float64)
    group = torch.arange(num_groups).repeat_interleave(rows_per_group)
    return {
        "x": x.reshape(-1).to(dtype),
        "group": group,
        "y": y.reshape(-1).to(dtype),
        "x_grouped": x.to(dtype),
        "y_grouped": y.to(dtype),
        "a": a.squeeze(-1),
        "b": b.squeeze(-1),
    }


def group_statistics(x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-group sufficient statistics of grouped rows ``x, y`` (groups, rows):
    ``xtx`` (G, 2, 2), ``xty`` (G, 2), ``yty`` (G,), ``n`` (rows per group)."""
    design = torch.stack([torch.ones_like(x), x], -1)
    return {
        "xtx": design.transpose(-1, -2) @ design,
        "xty": (design.transpose(-1, -2) @ y.unsqueeze(-1)).squeeze(-1),
        "yty": (y**2).sum(-1),
        "n": torch.tensor(float(x.shape[-1]), dtype=x.dtype),
    }


def group_posterior(mu, scales, sigma, stats) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact ``p((a_j, b_j) | globals, y_j) = N(mean, cov)``: mean (..., G, 2)
    and cov (..., G, 2, 2), for ``mu`` (..., 2), ``scales`` (..., 2) = (sigma_a,
    sigma_b) and ``sigma`` (...)."""
    s2 = sigma[..., None, None, None] ** 2
    prior_precision = torch.diag_embed(scales.pow(-2))[..., None, :, :]
    precision = prior_precision + stats["xtx"] / s2
    cov = torch.linalg.inv(precision)
    rhs = (prior_precision @ mu[..., None, :, None]).squeeze(-1) + stats["xty"] / s2[..., 0]
    return (cov @ rhs.unsqueeze(-1)).squeeze(-1), cov


def collapsed_regression(stats: dict[str, torch.Tensor]) -> None:
    """The hierarchical regression with the group effects integrated out
    (they are Gaussian given the globals): a 5-parameter model with the same
    marginal posterior of the globals, cheap for long NUTS references."""
    mu_a, mu_b, sigma_a, sigma_b, sigma = _globals(stats["xty"])
    mu, scales = torch.stack([mu_a, mu_b], -1), torch.stack([sigma_a, sigma_b], -1)
    s2 = sigma[..., None] ** 2
    xtx, xty, yty, n = stats["xtx"], stats["xty"], stats["yty"], stats["n"]
    precision = torch.diag_embed(scales.pow(-2))[..., None, :, :] + xtx / s2[..., None]
    xtr = xty - (xtx @ mu[..., None, :, None]).squeeze(-1)  # X^T (y - X m)
    mtm = (mu[..., None, None, :] @ xtx @ mu[..., None, :, None])[..., 0, 0]  # m^T X^T X m
    rtr = yty - 2 * (xty * mu[..., None, :]).sum(-1) + mtm
    solved = torch.linalg.solve(precision, xtr.unsqueeze(-1)).squeeze(-1)
    quad = rtr / s2 - (xtr * solved).sum(-1) / s2**2
    logdet = n * s2.log() + 2 * scales.log().sum(-1, keepdim=True) + torch.logdet(precision)
    log_lik = -0.5 * (n * math.log(2 * math.pi) + logdet + quad)
    pyro.factor("y", log_lik.sum(-1))
