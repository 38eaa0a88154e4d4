"""Pyro versions of the nine posteriordb models (see ``data/README.md``).

Each model takes the posteriordb data as tensors. Global latents are sampled
outside the data plate (``dim=-1``), so the models vectorise over particles
(``Trace_ELBO(vectorize_particles=True)``) as well as run one draw at a time.
Sites named like the Stan parameters (``theta``, ``f``, ``beta1``) hold the
quantities the reference draws record.
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import constraints


def flat(support: constraints.Constraint, event_shape: tuple[int, ...] = ()) -> dist.ImproperUniform:
    """Stan's default prior: improper uniform over ``support``."""
    return dist.ImproperUniform(support, (), event_shape)


def _linear(x: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """``x @ beta`` for data ``x`` (N, K) and a global ``beta`` (..., [1,] K).

    A batched ``beta`` carries the data plate's size-1 dim before ``K``; drop it
    so the result lines up with the plate: (..., N).
    """
    out = beta @ x.T
    return out.squeeze(-2) if beta.dim() >= 2 else out


def eight_schools_noncentered(sigma: torch.Tensor, y: torch.Tensor | None = None) -> None:
    mu = pyro.sample("mu", dist.Normal(0.0, 5.0))
    tau = pyro.sample("tau", dist.HalfCauchy(5.0))
    with pyro.plate("school", len(sigma)):
        theta_trans = pyro.sample("theta_trans", dist.Normal(0.0, 1.0))
        theta = pyro.deterministic("theta", mu + tau * theta_trans)
        pyro.sample("y", dist.Normal(theta, sigma), obs=y)


def eight_schools_centered(sigma: torch.Tensor, y: torch.Tensor | None = None) -> None:
    """Eight schools in the centred form: the funnel between tau and theta
    that makes plain NUTS diverge (the NeuTra benchmark's first model)."""
    mu = pyro.sample("mu", dist.Normal(0.0, 5.0))
    tau = pyro.sample("tau", dist.HalfCauchy(5.0))
    with pyro.plate("school", len(sigma)):
        theta = pyro.sample("theta", dist.Normal(mu, tau))
        pyro.sample("y", dist.Normal(theta, sigma), obs=y)


def funnel(dim: int = 10) -> None:
    """Neal's funnel in ``dim`` dimensions: v ~ N(0, 3), x_i | v ~ N(0, e^(v/2)), i < dim."""
    v = pyro.sample("v", dist.Normal(0.0, 3.0))
    with pyro.plate("coordinate", dim - 1):
        pyro.sample("x", dist.Normal(0.0, (v / 2).exp()))


def kidscore_momiq(mom_iq: torch.Tensor, kid_score: torch.Tensor | None = None) -> None:
    beta = pyro.sample("beta", flat(constraints.real_vector, (2,)))
    sigma = pyro.sample("sigma", dist.HalfCauchy(2.5))
    x = torch.stack([torch.ones_like(mom_iq), mom_iq], -1)
    with pyro.plate("data", len(mom_iq)):
        pyro.sample("kid_score", dist.Normal(_linear(x, beta), sigma), obs=kid_score)


def logearn_interaction(height: torch.Tensor, male: torch.Tensor, log_earn: torch.Tensor | None = None) -> None:
    beta = pyro.sample("beta", flat(constraints.real_vector, (4,)))
    sigma = pyro.sample("sigma", flat(constraints.positive))
    x = torch.stack([torch.ones_like(height), height, male, height * male], -1)
    with pyro.plate("data", len(height)):
        pyro.sample("log_earn", dist.Normal(_linear(x, beta), sigma), obs=log_earn)


def ark(y: torch.Tensor, order: int = 5) -> None:
    alpha = pyro.sample("alpha", dist.Normal(0.0, 10.0))
    beta = pyro.sample("beta", dist.Normal(0.0, 10.0).expand([order]).to_event(1))
    sigma = pyro.sample("sigma", dist.HalfCauchy(2.5))
    t = len(y)
    lags = torch.stack([y[order - k : t - k] for k in range(1, order + 1)], -1)
    with pyro.plate("time", t - order):
        pyro.sample("y", dist.Normal(alpha + _linear(lags, beta), sigma), obs=y[order:])


def garch11(y: torch.Tensor, sigma1: float) -> None:
    mu = pyro.sample("mu", flat(constraints.real))
    alpha0 = pyro.sample("alpha0", flat(constraints.positive))
    alpha1 = pyro.sample("alpha1", flat(constraints.unit_interval))
    # beta1 is flat on (0, 1 - alpha1): sample its fraction of that interval and
    # add the Jacobian log(1 - alpha1) so the density stays flat in beta1.
    fraction = pyro.sample("beta1_fraction", flat(constraints.unit_interval))
    pyro.factor("beta1_jacobian", torch.log1p(-alpha1))
    beta1 = pyro.deterministic("beta1", (1 - alpha1) * fraction)
    # sigma_t^2 = c_t + beta1 sigma_{t-1}^2 is linear: sigma^2 = M c with
    # M[t, j] = beta1^(t - j) for j <= t and c_0 = sigma1^2.
    t = len(y)
    c = alpha0 + alpha1 * (y[:-1] - mu) ** 2
    c = torch.cat([torch.full_like(c[..., :1], sigma1**2), c], -1)
    lag = torch.arange(t, dtype=y.dtype)
    lag = lag[:, None] - lag
    log_beta = torch.log(beta1).clamp(min=-500.0)[..., None]
    powers = torch.exp(lag.clamp(min=0) * log_beta).tril()
    variance = (powers @ c.unsqueeze(-1)).squeeze(-1)
    with pyro.plate("time", t):
        pyro.sample("y", dist.Normal(mu, variance.sqrt()), obs=y)


def gp_pois_regr(x: torch.Tensor, k: torch.Tensor | None = None) -> None:
    rho = pyro.sample("rho", dist.Gamma(25.0, 4.0))
    alpha = pyro.sample("alpha", dist.HalfNormal(2.0))
    n = len(x)
    # Stan's jitter 1e-10 only makes sense in float64: build and factorise K there.
    x64 = x.double()
    sq_dist = (x64[:, None] - x64) ** 2
    cov = alpha.double()[..., None] ** 2 * torch.exp(-sq_dist / (2 * rho.double()[..., None] ** 2))
    chol = torch.linalg.cholesky(cov + 1e-10 * torch.eye(n, dtype=torch.float64)).to(x.dtype)
    with pyro.plate("points", n):
        f_tilde = pyro.sample("f_tilde", dist.Normal(0.0, 1.0))
        f = pyro.deterministic("f", (chol @ f_tilde.unsqueeze(-1)).squeeze(-1))
        pyro.sample("k", dist.Poisson(f.exp()), obs=k)


def low_dim_gauss_mix(y: torch.Tensor) -> None:
    mu = pyro.sample("mu", flat(constraints.ordered_vector, (2,)))
    pyro.factor("mu_prior", dist.Normal(0.0, 2.0).log_prob(mu).sum(-1))
    sigma = pyro.sample("sigma", dist.HalfNormal(2.0).expand([2]).to_event(1))
    theta = pyro.sample("theta", dist.Beta(5.0, 5.0))
    with pyro.plate("data", len(y)):
        y_ = y.unsqueeze(-1)
        mix = torch.stack([theta, 1 - theta], -1).log()
        log_lik = dist.Normal(mu.unsqueeze(-2), sigma.unsqueeze(-2)).log_prob(y_) + mix.unsqueeze(-2)
        if mu.dim() >= 2:  # batched: mu is (..., 1, 2) and y_ (N, 1)
            log_lik = log_lik.squeeze(-3)
        pyro.factor("y", torch.logsumexp(log_lik, -1))


def diamonds(x: torch.Tensor, y: torch.Tensor | None = None) -> None:
    xc = x[:, 1:] - x[:, 1:].mean(0)
    b = pyro.sample("b", dist.Normal(0.0, 1.0).expand([xc.shape[1]]).to_event(1))
    intercept = pyro.sample("Intercept", dist.StudentT(3.0, 8.0, 10.0))
    sigma = pyro.sample("sigma", dist.FoldedDistribution(dist.StudentT(3.0, 0.0, 10.0)))
    with pyro.plate("data", len(x)):
        pyro.sample("y", dist.Normal(intercept + _linear(xc, b), sigma), obs=y)


def logmesquite_logvash(
    diam1: torch.Tensor,
    diam2: torch.Tensor,
    canopy_height: torch.Tensor,
    total_height: torch.Tensor,
    group: torch.Tensor,
    log_weight: torch.Tensor | None = None,
) -> None:
    beta = pyro.sample("beta", flat(constraints.real_vector, (6,)))
    sigma = pyro.sample("sigma", flat(constraints.positive))
    x = torch.stack(
        [
            torch.ones_like(diam1),
            torch.log(diam1 * diam2 * canopy_height),
            torch.log(diam1 * diam2),
            torch.log(diam1 / diam2),
            torch.log(total_height),
            group,
        ],
        -1,
    )
    with pyro.plate("data", len(diam1)):
        pyro.sample("log_weight", dist.Normal(_linear(x, beta), sigma), obs=log_weight)
