"""``pyroflows fit path.py:model --data data.npz``: a flow guide for a model
in a Python file, written out as ArviZ InferenceData, a pair plot and a
diagnostics table, with no loop to write.

The data file's arrays become the model's keyword arguments: ``.npz``
(numpy), ``.pt`` (a ``torch.save``d dict of tensors or arrays) or ``.csv``
(a header row of names, one column per argument). Floating-point arrays
become tensors of the default dtype (float64 with ``--float64``), integer
arrays int64 tensors (indices; store counts as floats if the model's
likelihood needs floats), 0-d arrays Python numbers.
"""

from __future__ import annotations

import importlib.util
import sys
import time
from pathlib import Path

import numpy as np

GUIDES = ("AutoFlow", "AutoNormal", "AutoMultivariateNormal")


def load_model(spec: str):
    """The callable named by ``path.py:name``."""
    path, _, name = spec.rpartition(":")
    if not path or not name:
        raise ValueError(f"expected the model as path.py:name, got {spec!r}")
    file = Path(path)
    if not file.is_file():
        raise ValueError(f"model file {path!r} does not exist")
    module_spec = importlib.util.spec_from_file_location(f"_pyroflows_model_{file.stem}", file)
    module = importlib.util.module_from_spec(module_spec)
    sys.path.insert(0, str(file.parent.resolve()))  # the model's own imports, as `python path.py` would
    try:
        module_spec.loader.exec_module(module)
    finally:
        sys.path.pop(0)
    model = getattr(module, name, None)
    if not callable(model):
        names = sorted(k for k, v in vars(module).items() if callable(v) and not k.startswith("_"))
        raise ValueError(f"{path} has no callable {name!r}; its callables: {names}")
    return model


def load_data(path: str | None, dtype) -> dict:
    """The data file's arrays as the model's keyword arguments."""
    import torch

    if path is None:
        return {}
    file = Path(path)
    if not file.is_file():
        raise ValueError(f"data file {path!r} does not exist")
    if file.suffix == ".npz":
        with np.load(file) as arrays:
            raw = {k: arrays[k] for k in arrays.files}
    elif file.suffix == ".pt":
        raw = torch.load(file, weights_only=True)
        if not isinstance(raw, dict):
            raise ValueError(f"{path} must hold a dict of named arrays, got {type(raw).__name__}")
    elif file.suffix == ".csv":
        table = np.genfromtxt(file, delimiter=",", names=True)
        raw = {name: np.asarray(table[name]) for name in table.dtype.names}
    else:
        raise ValueError(f"data file must be .npz, .pt or .csv, got {file.name!r}")
    return {name: _as_argument(name, value, dtype) for name, value in raw.items()}


def _as_argument(name: str, value, dtype):
    import torch

    array = value.numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
    if array.ndim == 0:
        return array.item()
    if array.dtype.kind == "f":
        return torch.as_tensor(array, dtype=dtype)
    if array.dtype.kind in "iub":
        return torch.as_tensor(array.astype(np.int64))
    raise ValueError(f"data {name!r} has dtype {array.dtype}: expected numbers")


def make_guide(name: str, model):
    from pyro.infer import autoguide

    from pyroflows.infer import AutoFlow, init_to_mean_or_zero

    if name == "AutoFlow":
        return AutoFlow(model)
    return getattr(autoguide, name)(model, init_loc_fn=init_to_mean_or_zero)


def run_fit(options, usage_error) -> int:
    """Fit, then write posterior.nc, diagnostics.csv and pair_plot.png to
    ``options.out``; a bad model or data file goes to ``usage_error``."""
    import pyro
    import torch

    from pyroflows.infer import StopRule, fit

    for name in ("steps", "seconds", "samples"):
        value = getattr(options, name)
        if value is not None and not value > 0:
            usage_error(f"--{name} must be positive, got {value}")
    if options.float64:
        torch.set_default_dtype(torch.float64)
    try:
        model = load_model(options.model)
        data = load_data(options.data, torch.get_default_dtype())
    except ValueError as err:
        usage_error(str(err))
    folder = Path(options.out)
    folder.mkdir(parents=True, exist_ok=True)
    pyro.clear_param_store()
    guide, rule = make_guide(options.guide, model), None if options.fixed else StopRule()
    start = time.perf_counter()
    losses = fit(
        model, guide, num_steps=options.steps, max_seconds=options.seconds, seed=options.seed,
        num_particles=8 if options.fixed else "auto", progress=not options.quiet, stop=rule, **data,
    )  # fmt: skip
    seconds = time.perf_counter() - start
    print(f"{options.guide}: {len(losses)} steps in {seconds:.1f} s; final loss {np.mean(losses[-50:]):.2f}")
    print(rule.reason if rule else f"ran the {len(losses)} steps asked for")
    write_results(model, guide, data, folder, options.samples)
    return 0


def write_results(model, guide, data: dict, folder: Path, num_samples: int) -> None:
    import arviz as az

    from pyroflows.diagnostics import pair_plot, to_inference_data

    idata = to_inference_data(model, guide, num_samples=num_samples, **data)
    idata.to_netcdf(str(folder / "posterior.nc"))
    summary = az.summary(idata, kind="stats")
    summary.to_csv(folder / "diagnostics.csv")
    print(summary.to_string())
    khat = idata.attrs["khat"]
    verdict = "reliable" if khat < 0.7 else "NOT reliable: more steps, a larger flow, or a reparameterised model"
    print(f"PSIS k-hat {khat:.2f} ({verdict}); importance ESS {idata.attrs['ess']:.0f} of {num_samples}")
    columns = _scalar_columns(idata.posterior, limit=5)
    if len(columns) >= 2:
        pair_plot({"guide": columns}, list(columns), str(folder / "pair_plot.png"))
    written = "posterior.nc, diagnostics.csv" + (", pair_plot.png" if len(columns) >= 2 else "")
    print(f"Wrote {folder}/: {written}")


def _scalar_columns(posterior, limit: int) -> dict[str, np.ndarray]:
    """Up to ``limit`` scalar components of the posterior, ``name`` or ``name[i]``."""
    columns = {}
    for name, values in posterior.data_vars.items():
        flat = values.values.reshape(values.shape[0] * values.shape[1], -1)
        for i in range(flat.shape[1]):
            if len(columns) == limit:
                return columns
            columns[name if flat.shape[1] == 1 else f"{name}[{i}]"] = flat[:, i]
    return columns


def add_parser(sub) -> None:
    p = sub.add_parser("fit", help="fit a flow guide to a model in a Python file and write the posterior")
    p.add_argument("model", help="the model, as path.py:name")
    p.add_argument("--data", help="named arrays (.npz, .pt or .csv) passed as the model's keyword arguments")
    p.add_argument("--out", default="pyroflows-fit", help="output folder (default: pyroflows-fit)")
    p.add_argument("--guide", choices=GUIDES, default="AutoFlow")
    p.add_argument("--steps", type=int, default=2000, help="at most this many SVI steps (default 2000)")
    p.add_argument("--fixed", action="store_true", help="exactly --steps steps, 8 particles (no stop rule)")
    p.add_argument("--seconds", type=float, help="time cap in seconds")
    p.add_argument("--samples", type=int, default=4000, help="posterior draws written (default: 4000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--float64", action="store_true", help="fit in float64")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
