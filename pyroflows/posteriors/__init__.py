"""The posterior suite: nine posteriordb posteriors with reference draws.

Examples:
    >>> post = load("kidiq-kidscore_momiq")
    >>> post.reference_names
    ['beta[1]', 'beta[2]', 'sigma']
    >>> post.reference.shape
    (10000, 3)
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib import resources

import numpy as np
import torch

from pyroflows.posteriors import models

__all__ = ["NAMES", "Posterior", "flatten_draws", "load"]


def _eight_schools(d):
    return (models.eight_schools_noncentered, (d["sigma"],), {"y": d["y"]})


def _eight_schools_latents(v, d):
    v["theta_trans"] = (v.pop("theta") - v["mu"][:, None]) / v["tau"][:, None]


def _kidiq(d):
    return (models.kidscore_momiq, (d["mom_iq"],), {"kid_score": d["kid_score"]})


def _earnings(d):
    return (models.logearn_interaction, (d["height"], d["male"]), {"log_earn": d["earn"].log()})


def _ark(d):
    return (models.ark, (d["y"], int(d["K"])), {})


def _garch(d):
    return (models.garch11, (d["y"], float(d["sigma1"])), {})


def _garch_latents(v, d):
    v["beta1_fraction"] = v.pop("beta1") / (1 - v["alpha1"])


def _gp(d):
    return (models.gp_pois_regr, (d["x"],), {"k": d["k"]})


def _gp_latents(v, d):
    x = d["x"].to(v["rho"].dtype)
    cov = v["alpha"][:, None, None] ** 2 * torch.exp(-((x[:, None] - x) ** 2) / (2 * v["rho"][:, None, None] ** 2))
    chol = torch.linalg.cholesky(cov + 1e-10 * torch.eye(len(x), dtype=x.dtype))
    v["f_tilde"] = torch.linalg.solve_triangular(chol, v.pop("f").unsqueeze(-1), upper=False).squeeze(-1)


def _gauss_mix(d):
    return (models.low_dim_gauss_mix, (d["y"],), {})


def _diamonds(d):
    return (models.diamonds, (d["X"],), {"y": d["Y"]})


def _mesquite(d):
    cols = ("diam1", "diam2", "canopy_height", "total_height", "group")
    return (models.logmesquite_logvash, tuple(d[c] for c in cols), {"log_weight": d["weight"].log()})


_BUILDERS: dict[str, Callable] = {
    "eight_schools-eight_schools_noncentered": _eight_schools,
    "kidiq-kidscore_momiq": _kidiq,
    "earnings-logearn_interaction": _earnings,
    "arK-arK": _ark,
    "garch-garch11": _garch,
    "gp_pois_regr-gp_pois_regr": _gp,
    "low_dim_gauss_mix-low_dim_gauss_mix": _gauss_mix,
    "diamonds-diamonds": _diamonds,
    "mesquite-logmesquite_logvash": _mesquite,
}
NAMES: tuple[str, ...] = tuple(_BUILDERS)
# Latent sites the reference does not record directly, from those it does.
_LATENTS_FROM_REFERENCE: dict[str, Callable] = {
    "eight_schools-eight_schools_noncentered": _eight_schools_latents,
    "gp_pois_regr-gp_pois_regr": _gp_latents,
    "garch-garch11": _garch_latents,
}


@dataclass
class Posterior:
    """A model with its data and reference draws.

    ``model(*args, **kwargs)`` is the Pyro model; ``reference`` holds the
    reference draws (draws x parameters, chains stacked) for the Stan-style
    ``reference_names``.
    """

    name: str
    model: Callable
    args: tuple
    kwargs: dict = field(default_factory=dict)
    reference_names: list[str] = field(default_factory=list)
    reference: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))
    data: dict = field(default_factory=dict, repr=False)

    def reference_dict(self) -> dict[str, np.ndarray]:
        return {n: self.reference[:, i] for i, n in enumerate(self.reference_names)}

    def reference_latents(self, num_draws: int | None = None, dtype=torch.float64) -> dict[str, torch.Tensor]:
        """The reference draws as values of the model's latent sites, (S, *shape) each."""
        ref = self.reference[:num_draws]
        sites: dict[str, list[int]] = {}
        for i, n in enumerate(self.reference_names):
            sites.setdefault(n.split("[")[0], []).append(i)
        values = {}
        for site, cols in sites.items():
            v = torch.as_tensor(ref[:, cols], dtype=dtype)
            values[site] = v if "[" in self.reference_names[cols[0]] else v[:, 0]
        hook = _LATENTS_FROM_REFERENCE.get(self.name)
        if hook is not None:
            hook(values, self.data)
        return values


def load(name: str, dtype: torch.dtype = torch.float32) -> Posterior:
    """Load posterior ``name`` (one of `NAMES`)."""
    if name not in _BUILDERS:
        raise ValueError(f"unknown posterior {name!r}; expected one of {list(NAMES)}")
    folder = resources.files("pyroflows.posteriors") / "data" / name
    with gzip.open(folder.joinpath("data.json.gz").open("rb")) as f:
        raw = json.load(f)
    data = {k: torch.tensor(v, dtype=dtype) if not np.isscalar(v) else v for k, v in raw.items()}
    model, args, kwargs = _BUILDERS[name](data)
    with folder.joinpath("reference_draws.npz").open("rb") as f:
        ref = np.load(f)
        names = [str(n) for n in ref["names"]]
        draws = ref["draws"].astype(np.float64).reshape(-1, len(names))
    return Posterior(name, model, args, kwargs, names, draws, data)


def flatten_draws(samples: Mapping[str, torch.Tensor | np.ndarray], sample_dims: int = 1) -> dict[str, np.ndarray]:
    """Name each scalar of each site Stan style: ``theta`` (S, 8) gives
    ``theta[1]`` ... ``theta[8]`` (1-based, row-major for matrices)."""
    out = {}
    for name, value in samples.items():
        value = np.asarray(value.detach().cpu() if isinstance(value, torch.Tensor) else value)
        batch, shape = value.shape[:sample_dims], value.shape[sample_dims:]
        if not shape:
            out[name] = value
            continue
        flat = value.reshape(*batch, -1)
        for i, idx in enumerate(np.ndindex(*shape)):
            out[f"{name}[{','.join(str(j + 1) for j in idx)}]"] = flat[..., i]
    return out
