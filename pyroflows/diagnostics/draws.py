"""Vectorised draws from a guide with their model and guide log densities."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pyro
import torch
from pyro import poutine
from pyro.poutine.util import site_is_subsample

from pyroflows.infer.latent import max_plate_nesting

__all__ = ["GuideDraws", "draw"]


@dataclass
class GuideDraws:
    """``num_samples`` guide draws: ``samples`` maps each latent and
    deterministic site to a (S, *site shape) tensor; ``log_p`` and ``log_q``
    are the model's log joint and the guide's log density at each draw;
    ``log_weights = log_p - log_q``. ``log_likelihood`` maps each observed
    site to its pointwise log likelihood (S, *batch shape) (what ``az.loo``
    needs) and ``observed`` to its data."""

    samples: dict[str, torch.Tensor]
    log_p: torch.Tensor
    log_q: torch.Tensor
    log_likelihood: dict[str, torch.Tensor] = field(default_factory=dict)
    observed: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def log_weights(self) -> torch.Tensor:
        return self.log_p - self.log_q

    @property
    def num_samples(self) -> int:
        return len(self.log_p)


def _per_draw(trace, num: int, nesting: int) -> torch.Tensor:
    total = torch.zeros(num)
    for site in trace.nodes.values():
        if site["type"] != "sample" or site_is_subsample(site):
            continue
        lp = site["log_prob"].detach()
        total = total + (lp.reshape(num, -1).sum(-1) if lp.dim() > nesting else lp.sum()).to(total.dtype)
    return total


def _reshape(value: torch.Tensor, num: int, shape: tuple[int, ...]) -> torch.Tensor:
    value = value.detach()
    if value.numel() == math.prod(shape):  # does not vary between draws
        return value.reshape(shape).expand((num, *shape))
    return value.reshape((num, *shape))


def _observed(model_trace):
    for name, site in model_trace.nodes.items():
        if site["type"] == "sample" and site["is_observed"] and not site_is_subsample(site):
            if not site["infer"].get("_deterministic"):
                yield name, site


def _sites(model_trace, guide_trace):
    """Latent sites (sampled by the guide, not auxiliary) and deterministic sites."""
    for name, site in model_trace.nodes.items():
        if site["type"] != "sample" or site_is_subsample(site):
            continue
        if site["infer"].get("_deterministic") or (not site["is_observed"] and name in guide_trace.nodes):
            yield name, site


@torch.no_grad()
def draw(model, guide, *args, num_samples: int = 1000, batch_size: int = 500, **kwargs) -> GuideDraws:
    """Draw ``num_samples`` times from ``guide`` and score each draw under
    ``model`` and ``guide``, ``batch_size`` draws at a time (vectorised with a
    plate left of the model's plates).

    Examples:
        >>> import pyro, pyro.distributions as dist
        >>> from pyro.infer.autoguide import AutoNormal
        >>> def model():
        ...     pyro.sample("x", dist.Normal(0.0, 1.0))
        >>> d = draw(model, AutoNormal(model), num_samples=10)
        >>> d.samples["x"].shape, d.log_weights.shape
        (torch.Size([10]), torch.Size([10]))
    """
    if num_samples < 1:
        raise ValueError(f"num_samples must be positive, got {num_samples}")
    with poutine.block():
        guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
        model_trace = poutine.trace(poutine.replay(model, guide_trace)).get_trace(*args, **kwargs)
    nesting = max(max_plate_nesting(model_trace), max_plate_nesting(guide_trace))
    shapes = {name: tuple(site["value"].shape) for name, site in _sites(model_trace, guide_trace)}
    samples: dict[str, list] = {name: [] for name in shapes}
    observed = {name: site["value"].detach() for name, site in _observed(model_trace)}
    model_trace.compute_log_prob(lambda name, site: name in observed)
    pointwise = {name: tuple(model_trace.nodes[name]["log_prob"].shape) for name in observed}
    log_lik: dict[str, list] = {name: [] for name in observed}
    log_p, log_q = [], []
    for start in range(0, num_samples, batch_size):
        num = min(batch_size, num_samples - start)
        plate = pyro.plate("_draws", num, dim=-nesting - 1)
        with poutine.block():
            guide_trace = poutine.trace(plate(guide)).get_trace(*args, **kwargs)
            model_trace = poutine.trace(poutine.replay(plate(model), guide_trace)).get_trace(*args, **kwargs)
        guide_trace.compute_log_prob()
        model_trace.compute_log_prob()
        log_q.append(_per_draw(guide_trace, num, nesting))
        log_p.append(_per_draw(model_trace, num, nesting))
        for name, shape in shapes.items():
            samples[name].append(_reshape(model_trace.nodes[name]["value"], num, shape))
        for name, shape in pointwise.items():
            log_lik[name].append(_reshape(model_trace.nodes[name]["log_prob"], num, shape))
    cat = {k: torch.cat(v) for k, v in samples.items()}
    return GuideDraws(cat, torch.cat(log_p), torch.cat(log_q), {k: torch.cat(v) for k, v in log_lik.items()}, observed)
