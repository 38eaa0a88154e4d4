"""ArviZ adapters: a guide's draws as ``InferenceData``, and NUTS beside it.

ArviZ is imported lazily (it is slow to import and only these functions need it).
"""

from __future__ import annotations

import time

import numpy as np
import pyro
from pyro.infer import MCMC, NUTS, Predictive
from pyro.infer.autoguide.initialization import InitMessenger

from pyroflows.diagnostics.draws import draw
from pyroflows.diagnostics.importance import psis
from pyroflows.infer.latent import init_to_mean_or_zero

__all__ = ["nuts", "posterior_draws", "to_inference_data"]


def to_inference_data(model, guide, *args, num_samples: int = 1000, **kwargs):
    """ArviZ ``InferenceData`` from ``num_samples`` draws of a fitted guide.

    ``posterior`` holds every latent and deterministic site (one chain);
    ``sample_stats`` holds ``lp`` (the model's log joint), ``log_q`` (the
    guide's log density) and ``log_weight`` (their difference, raw) and
    ``smoothed_log_weight`` (Pareto-smoothed, normalised); ``attrs`` hold
    ``khat`` and ``ess`` from PSIS; ``log_likelihood`` the pointwise log
    likelihood of each observed site and ``observed_data`` its data, so
    ``az.loo`` and ``az.waic`` work. ``az.summary`` and ArviZ plots accept it.
    (``az.from_pyro`` takes only an MCMC run: use this for a guide.)
    """
    import arviz as az

    draws = draw(model, guide, *args, num_samples=num_samples, **kwargs)
    smoothed = psis(draws.log_weights)
    posterior = {k: v.cpu().numpy()[None] for k, v in draws.samples.items()}
    stats = {
        "lp": draws.log_p.numpy()[None],
        "log_q": draws.log_q.numpy()[None],
        "log_weight": draws.log_weights.numpy()[None],
        "smoothed_log_weight": smoothed.log_weights[None],
    }
    attrs = {
        "khat": smoothed.khat,
        "ess": smoothed.ess,
        "guide": type(guide).__name__,
        "inference_library": "pyroflows",
    }
    return az.from_dict(
        posterior=posterior,
        sample_stats=stats,
        log_likelihood={k: v.cpu().numpy()[None] for k, v in draws.log_likelihood.items()},
        observed_data={k: v.cpu().numpy() for k, v in draws.observed.items()},
        attrs=attrs,
    )


def _deterministic_sites(model, samples: dict, args, kwargs) -> dict[str, np.ndarray]:
    trace = pyro.poutine.trace(pyro.poutine.condition(model, {k: v[0] for k, v in samples.items()})).get_trace(
        *args, **kwargs
    )
    names = [n for n, s in trace.nodes.items() if s["type"] == "sample" and s["infer"].get("_deterministic")]
    if not names:
        return {}
    predicted = Predictive(model, posterior_samples=samples, return_sites=names)(*args, **kwargs)
    num = len(next(iter(samples.values())))
    return {n: predicted[n].cpu().numpy().reshape(num, *trace.nodes[n]["value"].shape) for n in names}


def nuts(
    model,
    *args,
    num_samples: int = 1000,
    warmup_steps: int = 500,
    num_chains: int = 1,
    seed: int = 0,
    progress: bool = False,
    **kwargs,
):
    """Run Pyro's NUTS on ``model``; return ``(InferenceData, wall seconds)``.

    Starts at unconstrained zero (so improper priors work) and adds the
    model's deterministic sites to the posterior group.
    """
    import arviz as az

    pyro.set_rng_seed(seed)
    # Pyro guesses plate nesting by running the model, sampling its prior;
    # initialise sites instead so improper priors work.
    model = InitMessenger(init_to_mean_or_zero)(model)
    kernel = NUTS(model, init_strategy=init_to_mean_or_zero)
    mcmc = MCMC(
        kernel, num_samples=num_samples, warmup_steps=warmup_steps, num_chains=num_chains, disable_progbar=not progress
    )
    start = time.perf_counter()
    mcmc.run(*args, **kwargs)
    seconds = time.perf_counter() - start
    idata = az.from_pyro(mcmc)
    samples = mcmc.get_samples()
    for name, value in _deterministic_sites(model, samples, args, kwargs).items():
        value = value.reshape(num_chains, num_samples, *value.shape[1:])
        dims = ["chain", "draw", *[f"{name}_dim_{i}" for i in range(value.ndim - 2)]]
        idata.posterior[name] = (dims, value)
    return idata, seconds


def posterior_draws(idata) -> dict[str, np.ndarray]:
    """Flatten an ``InferenceData`` posterior to ``{site: (chains * draws, *shape)}``."""
    post = idata.posterior
    return {k: np.asarray(post[k].values).reshape(-1, *post[k].shape[2:]) for k in post.data_vars}
