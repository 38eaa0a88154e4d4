import subprocess
import sys

import arviz as az
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
