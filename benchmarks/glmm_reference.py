"""Reference posteriors for the ``glmm`` table of benchmarks/hierarchical.py, stored once.

Given the globals, each group's two random effects are independent of every
other group's, so the globals' marginal posterior is

$$
p(\\theta \\mid y) \\propto p(\\theta) \\prod_i \\int p(y_i \\mid l_i, \\theta)\\, p(l_i \\mid \\theta)\\, dl_i .
$$

Each group's 2-D integral is taken by adaptive Gauss-Hermite quadrature
(nodes centred and scaled at the group's conditional mode and curvature),
and the 2-D (Poisson) or 3-D (logistic) posterior of the globals on a grid
in their unconstrained coordinates, aligned with their Laplace covariance
and reaching 6 sds. The groups' moments follow by total expectation over
the grid. float64 throughout; ``--check`` reruns with more nodes and a finer
grid and prints the largest change (in posterior sds); ``--nuts`` runs NUTS
on the model itself (float64, 1000 + 1000 iterations) and stores how far
its means of the globals sit from the reference, in their standard errors'
units (z). No sampler in the reference, so no Monte Carlo error: exact up to
quadrature.

    python benchmarks/glmm_reference.py --check --nuts
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import pyro
import torch
import torch.distributions as D
from member_flow import glmm_data
from pyro.infer import MCMC, NUTS

RESULTS = Path(__file__).parent / "results" / "glmm_reference.json"
HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


def normal(x, loc, scale):
    return D.Normal(loc, scale, validate_args=False).log_prob(x)


def half_normal(x, scale):
    return D.HalfNormal(scale, validate_args=False).log_prob(x)


class Poisson:
    """``member_flow.poisson``: globals (mu, log tau), locals (a, b)."""

    names, local_names = ("mu", "tau"), ("a", "b")

    def prior(self, theta):
        mu, log_tau = theta.unbind(-1)
        tau = log_tau.exp()
        return normal(mu, 0.0, 2.0) + half_normal(tau, 1.0) + log_tau  # the Jacobian of tau = exp(log tau)

    def local(self, a, c, theta, x, y):
        """Each group's log joint (..., G) for effects ``a, c`` (..., G) at globals ``theta`` (..., 1, 2)."""
        mu, tau = theta[..., 0], theta[..., 1].exp()
        eta = a[..., None] + c[..., None] * x
        lik = D.Poisson(eta.exp(), validate_args=False).log_prob(y).sum(-1)
        return normal(a, mu, tau) + normal(c, 0.0, 0.5) + lik

    def constrained(self, theta):
        return {"mu": theta[..., 0], "tau": theta[..., 1].exp()}


class Logistic:
    """``member_flow.logistic``: globals (mu, beta, log tau), locals (a, s)."""

    names, local_names = ("mu", "beta", "tau"), ("a", "s")

    def prior(self, theta):
        mu, beta, log_tau = theta.unbind(-1)
        tau = log_tau.exp()
        return normal(mu, 0.0, 2.0) + normal(beta, 0.0, 2.0) + half_normal(tau, 2.0) + log_tau

    def local(self, a, c, theta, x, y):
        mu, beta, tau = theta[..., 0], theta[..., 1], theta[..., 2].exp()
        logits = a[..., None] + (beta[..., None] + 0.3 * c[..., None]) * x
        lik = D.Bernoulli(logits=logits, validate_args=False).log_prob(y).sum(-1)
        return normal(a, mu, tau) + normal(c, 0.0, 1.0) + lik

    def constrained(self, theta):
        return {"mu": theta[..., 0], "beta": theta[..., 1], "tau": theta[..., 2].exp()}


def group_modes(spec, theta, x, y, iterations: int = 30):
    """Each group's conditional mode of its effects and the Cholesky factor of
    the inverse Hessian there (Newton's method, all groups at once)."""
    point = torch.zeros(x.shape[0], 2, dtype=x.dtype)
    for _ in range(iterations):
        point, precision = _newton(spec, theta, x, y, point)
    return point, torch.linalg.cholesky(torch.linalg.inv(precision))


def _newton(spec, theta, x, y, point):
    """One damped Newton step for every group; the precision at the step's start."""
    point = point.detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(spec.local(point[:, 0], point[:, 1], theta, x, y).sum(), point, create_graph=True)
    hessian = torch.stack([torch.autograd.grad(grad[:, k].sum(), point, retain_graph=True)[0] for k in range(2)], -1)
    precision = -0.5 * (hessian + hessian.mT).detach()
    step = torch.linalg.solve(precision, grad.detach().unsqueeze(-1)).squeeze(-1)
    scale = step.norm(dim=-1, keepdim=True).clamp(min=1.0)  # damped far from the mode
    return (point + step / scale).detach(), precision


def quadrature(order: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Product Gauss-Hermite nodes (K, 2) and log weights (K,) for a standard 2-D normal weight."""
    t, w = np.polynomial.hermite_e.hermegauss(order)
    t, w = torch.tensor(t), torch.tensor(w / math.sqrt(2 * math.pi))
    nodes = torch.cartesian_prod(t, t)
    log_w = torch.cartesian_prod(w, w).log().sum(-1) + 0.5 * nodes.square().sum(-1) + 2 * HALF_LOG_2PI
    return nodes, log_w


def group_terms(spec, theta, centres, chols, nodes, log_w, x, y):
    """Per grid point (P, 2|3) and group: log of the group's integral (P, G)
    and the effects' conditional first and second moments (P, G, 2) each."""
    z = centres[:, None] + (chols[:, None] @ nodes[..., None]).squeeze(-1)  # (G, K, 2)
    log_det = chols.diagonal(dim1=-2, dim2=-1).log().sum(-1)  # (G,)
    th = theta[:, None, None, :]
    log_f = spec.local(z[..., 0], z[..., 1], th, x[:, None], y[:, None]) + log_w  # (P, G, K)
    log_integral = torch.logsumexp(log_f, -1) + log_det
    weights = torch.softmax(log_f, -1)[..., None]
    return log_integral, (weights * z).sum(-2), (weights * z.square()).sum(-2)


def collapsed(spec, theta, centres, chols, nodes, log_w, x, y):
    log_integral, _, _ = group_terms(spec, theta[None], centres, chols, nodes, log_w, x, y)
    return spec.prior(theta) + log_integral.sum()


def mode_and_covariance(spec, theta, centres, chols, nodes, log_w, x, y):
    theta = theta.clone().requires_grad_(True)
    optimizer = torch.optim.LBFGS([theta], max_iter=200, tolerance_grad=1e-10, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = -collapsed(spec, theta, centres, chols, nodes, log_w, x, y)
        loss.backward()
        return loss

    optimizer.step(closure)
    theta = theta.detach()
    hessian = torch.autograd.functional.hessian(lambda t: collapsed(spec, t, centres, chols, nodes, log_w, x, y), theta)
    return theta, torch.linalg.inv(-hessian)


def reference(spec, x, y, order: int, points: int, chunk: int = 16) -> dict:
    nodes, log_w = quadrature(order)
    theta = torch.zeros(len(spec.names), dtype=x.dtype)
    for _ in range(2):  # centre the quadrature at the modes given the globals' mode
        centres, chols = group_modes(spec, theta, x, y)
        theta, cov = mode_and_covariance(spec, theta, centres, chols, nodes, log_w, x, y)
    axis = torch.linspace(-6, 6, points, dtype=x.dtype)
    grid = torch.cartesian_prod(*[axis] * len(theta)).reshape(-1, len(theta))
    thetas = theta + grid @ torch.linalg.cholesky(cov).T
    log_post, first, second = [], [], []
    with torch.no_grad():
        for part in thetas.split(chunk):
            log_integral, m1, m2 = group_terms(spec, part, centres, chols, nodes, log_w, x, y)
            log_post.append(spec.prior(part) + log_integral.sum(-1))
            first.append(m1)
            second.append(m2)
    weights = torch.softmax(torch.cat(log_post), 0)
    edge = _edge_mass(weights, grid)
    moments = {}
    for name, value in spec.constrained(thetas).items():
        mean = (weights * value).sum()
        moments[name] = [mean.item(), (weights * (value - mean) ** 2).sum().sqrt().item()]
    m1, m2 = (torch.einsum("p,pgd->gd", weights, torch.cat(m)) for m in (first, second))
    sd = (m2 - m1.square()).clamp(min=0).sqrt()
    for k, name in enumerate(spec.local_names):
        moments[name] = [m1[:, k].tolist(), sd[:, k].tolist()]
    return {"order": order, "points": points, "edge_mass": edge, "moments": moments}


def _edge_mass(weights: torch.Tensor, grid: torch.Tensor) -> float:
    """Posterior mass on the grid's outermost shell (small: the grid reaches far enough)."""
    return weights[(grid.abs() >= grid.abs().max() - 1e-9).any(-1)].sum().item()


def largest_change(a: dict, b: dict) -> float:
    worst = 0.0
    for name, (mean, sd) in a.items():
        mean, sd = torch.tensor(mean), torch.tensor(sd)
        other_mean, other_sd = torch.tensor(b[name][0]), torch.tensor(b[name][1])
        worst = max(worst, ((mean - other_mean).abs() / sd).max().item(), (other_sd / sd).log().abs().max().item())
    return worst


def nuts_check(model, args, moments: dict, names, iterations: int = 1000, seed: int = 0) -> dict:
    """NUTS on ``model`` itself: each global's ``(mean - reference) / (sd / sqrt(ESS))``."""
    args = tuple(a.double() if torch.is_tensor(a) and a.is_floating_point() else a for a in args)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # the model's float constants too
    try:
        pyro.set_rng_seed(seed)
        mcmc = MCMC(NUTS(model), num_samples=iterations, warmup_steps=iterations, disable_progbar=True)
        mcmc.run(*args)
    finally:
        torch.set_default_dtype(previous)
    draws, diagnostics = mcmc.get_samples(), mcmc.diagnostics()
    z, ess = {}, {}
    for name in names:
        ess[name] = float(diagnostics[name]["n_eff"])
        mean, sd = moments[name]
        z[name] = (draws[name].mean().item() - mean) / (sd / math.sqrt(ess[name]))
    return {"iterations": iterations, "z": z, "ess": ess}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="also with more nodes and a finer grid")
    parser.add_argument("--nuts", action="store_true", help="also NUTS on the model, against the reference")
    args = parser.parse_args()
    torch.set_num_threads(1)
    results = {}
    for name, (model, (x, group, groups, y)) in glmm_data().items():
        spec = Poisson() if name == "poisson" else Logistic()
        if not torch.equal(group, torch.arange(groups).repeat_interleave(len(x) // groups)):
            raise ValueError("glmm_data's rows must come group by group, in equal numbers")
        x, y = x.double().reshape(groups, -1), y.double().reshape(groups, -1)
        points = 41 if len(spec.names) == 2 else 17
        start = time.perf_counter()
        results[name] = reference(spec, x, y, order=10, points=points)
        results[name]["seconds"] = time.perf_counter() - start
        if args.check:
            finer = reference(spec, x, y, order=13, points=points + 4)
            results[name]["check_largest_change_sd"] = largest_change(results[name]["moments"], finer["moments"])
        if args.nuts:
            model_args = (x.reshape(-1), group, groups, y.reshape(-1))  # the same float32 draws, as float64
            results[name]["nuts_check"] = nuts_check(model, model_args, results[name]["moments"], spec.names)
        print(name, {k: v for k, v in results[name].items() if k != "moments"}, flush=True)
        print({k: v for k, v in results[name]["moments"].items() if k in spec.names}, flush=True)
    RESULTS.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
