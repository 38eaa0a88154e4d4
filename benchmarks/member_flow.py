"""How big AutoFlow's member flow needs to be: random-effect GLMMs.

The plate-aware AutoFlow corrects each member's Newton (Laplace) Gaussian
with a member flow: one conditional spline layer and an affine head. On
Gaussian models the Gaussian is exact; this table asks what the learned part
buys where it is not: a logistic model (varying intercepts and slopes) and a
Poisson model (varying intercepts and slopes), 50 groups of 6 rows, default
``fit``. Columns: CPU seconds (one thread), the ELBO and the importance-
sampled log evidence from 4000 draws (their gap is KL(q || p)), PSIS k-hat.

    python benchmarks/member_flow.py
"""

from __future__ import annotations

import time
import warnings

import pyro
import pyro.distributions as dist
import torch
from common import FIXED_SCHEDULE, save, table

from pyroflows.diagnostics import draw, psis
from pyroflows.infer import AutoFlow, fit

VARIANTS = {
    "width 64, spline": {"local_hidden_dims": (64, 64)},
    "width 32, spline (default)": {},
    "width 64, no spline": {"local_hidden_dims": (64, 64), "local_transforms": 0},
    "width 32, no spline": {"local_hidden_dims": (32,), "local_transforms": 0},
}


def logistic(x, group, num_groups, y=None):
    mu = pyro.sample("mu", dist.Normal(0.0, 2.0))
    beta = pyro.sample("beta", dist.Normal(0.0, 2.0))
    tau = pyro.sample("tau", dist.HalfNormal(2.0))
    with pyro.plate("groups", num_groups):
        a = pyro.sample("a", dist.Normal(mu, tau))
        s = pyro.sample("s", dist.Normal(0.0, 1.0))
    with pyro.plate("data", len(x)):
        pyro.sample("y", dist.Bernoulli(logits=a[..., group] + (beta + 0.3 * s[..., group]) * x), obs=y)


def poisson(x, group, num_groups, y=None):
    mu = pyro.sample("mu", dist.Normal(0.0, 2.0))
    tau = pyro.sample("tau", dist.HalfNormal(1.0))
    with pyro.plate("groups", num_groups):
        a = pyro.sample("a", dist.Normal(mu, tau))
        b = pyro.sample("b", dist.Normal(0.0, 0.5))
    with pyro.plate("data", len(x)):
        pyro.sample("y", dist.Poisson((a[..., group] + b[..., group] * x).exp()), obs=y)


def simulate(groups: int = 50, rows: int = 6, order: tuple[str, ...] = ("logistic", "poisson")) -> dict:
    """``{name: (model, args)}``; each model's outcomes drawn in turn, in ``order``."""
    gen = torch.Generator().manual_seed(1)
    group = torch.arange(groups).repeat_interleave(rows)
    x = torch.randn(groups * rows, generator=gen, dtype=torch.float32)  # the same draws under any default dtype
    a = 0.5 + torch.randn(groups, generator=gen, dtype=torch.float32)
    draw = {
        "logistic": lambda: torch.bernoulli(torch.sigmoid(a[group] + 0.8 * x), generator=gen),
        "poisson": lambda: torch.poisson((a[group] - 1.0 + 0.3 * x).exp(), generator=gen),
    }
    models = {"logistic": logistic, "poisson": poisson}
    return {name: (models[name], (x, group, groups, draw[name]())) for name in order}


def glmm_data() -> dict:
    """The ``glmm`` table's data sets (benchmarks/hierarchical.py): 1,000 groups of 10 rows."""
    return simulate(1000, 10, order=("poisson", "logistic"))


def main() -> None:
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    rows = []
    for name, (model, args) in simulate().items():
        for variant, options in VARIANTS.items():
            pyro.clear_param_store()
            guide = AutoFlow(model, **options)
            cpu = time.process_time()
            fit(model, guide, *args, progress=False, seed=0, **FIXED_SCHEDULE)
            cpu = time.process_time() - cpu
            log_w = draw(model, guide, *args, num_samples=4000).log_weights
            log_z = torch.logsumexp(log_w, 0) - torch.log(torch.tensor(float(len(log_w))))
            row = {"model": name, "member flow": variant, "cpu_s": cpu, "elbo": float(log_w.mean())}
            rows.append({**row, "log_evidence": float(log_z), "khat": psis(log_w).khat})
            print(rows[-1], flush=True)
    print(table(rows, ["model", "member flow", "cpu_s", "elbo", "log_evidence", "khat"]))
    save("member_flow", {"rows": rows})


if __name__ == "__main__":
    main()
