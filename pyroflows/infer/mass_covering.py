"""A mass-covering fine-tuning phase for a fitted guide.

``fit`` maximises the ELBO, i.e. minimises ``KL(q || p)``: mode-seeking, so
on thin, curved posteriors the guide comes out too narrow. Fine-tuning on
Renyi's alpha-divergence bound (Li and Turner, 2016),

$$
\\mathcal{L}_\\alpha = \\frac{1}{1 - \\alpha}
\\log \\frac1K \\sum_{k=1}^K \\Big(\\frac{p(x, z_k)}{q(z_k)}\\Big)^{1 - \\alpha},
\\qquad z_k \\sim q,
$$

with ``0 <= alpha < 1`` (``alpha = 0``: the importance-weighted bound of
Burda et al.) rewards a guide that covers more of the posterior. It starts
from the fitted guide: from scratch the bound's gradients for the guide are
too noisy (their signal-to-noise ratio falls as ``K`` grows; Rainforth et
al., 2018).
"""

from __future__ import annotations

import inspect

import numpy as np
import torch
from pyro import poutine
from pyro.infer import RenyiELBO
from pyro.poutine.util import site_is_subsample

from pyroflows.distributed import rank_and_world
from pyroflows.infer.fit import fit

__all__ = ["fit_mass_covering"]


def fit_mass_covering(
    model,
    guide,
    *args,
    alpha: float = 0.5,
    num_particles: int = 32,
    num_steps: int = 1000,
    lr: float = 1e-3,
    **kwargs,
) -> np.ndarray:
    """Fine-tune a fitted ``guide`` on Renyi's alpha bound; returns the loss per step.

    Runs `fit` (same schedule, clipping, averaging and
    non-finite checks; its options pass through ``kwargs``) with Pyro's
    ``RenyiELBO(alpha, num_particles, vectorize_particles=True)``. Call it
    after ``fit``; the model must vectorise over particles and must not
    subsample or be sharded over processes (the bound is not unbiased over
    minibatches): both raise ``ValueError``.

    Examples:
        >>> import pyro
        >>> import pyro.distributions as dist
        >>> from pyroflows.infer import AutoFlow, fit
        >>> def model():
        ...     pyro.sample("x", dist.Normal(3.0, 1.0))
        >>> pyro.clear_param_store()
        >>> guide = AutoFlow(model)
        >>> _ = fit(model, guide, num_steps=200, progress=False, seed=0)
        >>> losses = fit_mass_covering(model, guide, num_steps=100, progress=False, seed=0)
        >>> len(losses)
        100
    """
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 <= alpha < 1:
        raise ValueError(f"alpha must be a number in [0, 1) (1 is the ELBO: use fit), got {alpha!r}")
    if isinstance(num_particles, bool) or not isinstance(num_particles, int) or num_particles < 2:
        raise ValueError(f"num_particles must be an int >= 2, got {num_particles!r}")
    if "loss" in kwargs:
        raise TypeError("fit_mass_covering sets the loss itself; for another objective call fit(loss=...)")
    _check_full_data(model, guide, args, kwargs)
    loss = RenyiELBO(alpha=alpha, num_particles=num_particles, vectorize_particles=True)
    kwargs.setdefault("stop", None)  # a fine-tuning phase of fixed length
    return fit(model, guide, *args, loss=loss, num_steps=num_steps, lr=lr, **kwargs)


def _check_full_data(model, guide, args, kwargs) -> None:
    """Refuse minibatches: a subsampled plate, or a data-parallel shard."""
    if kwargs.get("data_plate") is not None and rank_and_world()[1] > 1:
        raise ValueError("fit_mass_covering cannot run data-parallel: the bound on a shard is not unbiased")
    model_kwargs = {k: v for k, v in kwargs.items() if k not in _FIT_OPTIONS}
    with torch.no_grad(), poutine.block():
        guide_trace = poutine.trace(guide).get_trace(*args, **model_kwargs)
        trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*args, **model_kwargs)
    for name, site in trace.nodes.items():
        if site["type"] == "sample" and site_is_subsample(site) and len(site["value"]) < site["fn"].size:
            raise ValueError(
                f"fit_mass_covering: plate {name!r} subsamples {len(site['value'])} of its {site['fn'].size} "
                "members; the Renyi bound is not unbiased over minibatches: fine-tune on the full data"
            )


_FIT_OPTIONS = {name for name, p in inspect.signature(fit).parameters.items() if p.kind is p.KEYWORD_ONLY}
