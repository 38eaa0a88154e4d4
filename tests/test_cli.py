import subprocess
import sys

import arviz as az
import numpy as np
import pytest

from pyroflows.cli import main


def test_demo_writes_table_plot_and_inference_data(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path), "--steps", "60", "--quiet"]) == 0
    out = capsys.readouterr().out
    for label in ("flow", "mean-field", "reference"):
        assert label in out
    assert (tmp_path / "pair_plot.png").stat().st_size > 10_000
    idata = az.from_netcdf(str(tmp_path / "flow.nc"))
    assert {"mu", "tau", "theta"} <= set(idata.posterior.data_vars) and "khat" in idata.attrs


def test_console_script_help_and_bad_arguments():
    result = subprocess.run([sys.executable, "-m", "pyroflows.cli", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "demo" in result.stdout
    with pytest.raises(SystemExit):
        main(["demo", "--steps", "0"])


MODEL = """
import pyro
import pyro.distributions as dist


def regression(x, y):
    a = pyro.sample("a", dist.Normal(0.0, 5.0))
    b = pyro.sample("b", dist.Normal(0.0, 5.0))
    sigma = pyro.sample("sigma", dist.HalfNormal(2.0))
    with pyro.plate("rows", len(x)):
        pyro.sample("y", dist.Normal(a + b * x, sigma), obs=y)
"""


def _regression_files(tmp_path):
    (tmp_path / "model.py").write_text(MODEL)
    rng = np.random.default_rng(0)
    x = rng.normal(size=80)
    y = 1.0 + 2.0 * x + 0.5 * rng.normal(size=80)
    np.savez(tmp_path / "data.npz", x=x, y=y)
    np.savetxt(tmp_path / "data.csv", np.column_stack([x, y]), delimiter=",", header="x,y", comments="")
    return tmp_path / "model.py"


@pytest.mark.parametrize("data", ["data.npz", "data.csv"])
def test_fit_command_writes_inference_data_diagnostics_and_pair_plot(tmp_path, capsys, data):
    model = _regression_files(tmp_path)
    out = tmp_path / "out"
    argv = [
        "fit",
        f"{model}:regression",
        "--data",
        str(tmp_path / data),
        "--out",
        str(out),
        "--steps",
        "300",
        "--fixed",
    ]
    assert main([*argv, "--samples", "1000", "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "PSIS k-hat" in printed and "ran the 300 steps" in printed
    idata = az.from_netcdf(str(out / "posterior.nc"))
    assert {"a", "b", "sigma"} <= set(idata.posterior.data_vars) and "y" in idata.observed_data
    b = idata.posterior["b"].values.reshape(-1)
    assert abs(b.mean() - 2.0) < 0.25  # the data's slope
    table = (out / "diagnostics.csv").read_text()
    assert table.splitlines()[0].startswith(",mean,sd") and "sigma" in table
    assert (out / "pair_plot.png").stat().st_size > 10_000


def test_fit_command_stop_rule_reports_why_it_stopped(tmp_path, capsys):
    model = _regression_files(tmp_path)
    argv = ["fit", f"{model}:regression", "--data", str(tmp_path / "data.npz"), "--out", str(tmp_path / "o")]
    assert main([*argv, "--steps", "700", "--samples", "500", "--quiet"]) == 0  # stop rule and auto particles
    printed = capsys.readouterr().out
    assert "converged at step" in printed or "by the step or time cap" in printed


@pytest.mark.parametrize(
    ("spec", "data", "message"),
    [
        ("missing.py:regression", None, "does not exist"),
        ("{model}:nothing", None, "has no callable 'nothing'"),
        ("{model}", None, "path.py:name"),
        ("{model}:regression", "data.txt", "must be .npz, .pt or .csv"),
    ],
)
def test_fit_command_rejects_bad_models_and_data(tmp_path, capsys, spec, data, message):
    model = _regression_files(tmp_path)
    (tmp_path / "data.txt").write_text("1,2")
    argv = ["fit", spec.format(model=model)] + (["--data", str(tmp_path / data)] if data else [])
    with pytest.raises(SystemExit):
        main(argv)
    assert message in capsys.readouterr().err
