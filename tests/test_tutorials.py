"""Tutorials run with small settings so they cannot rot."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "tutorials" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_density_2d_tutorial_learns_and_writes_a_plot(tmp_path, capsys):
    tutorial = _load("density_2d")
    out = tmp_path / "density.png"
    nll = tutorial.main(["--dataset", "8gaussians", "--steps", "300", "--out", str(out)])
    # The 8-gaussians density has entropy about 2.9 nats; a standard normal scores ~4.6 nats.
    assert math.isfinite(nll) and nll < 4.0
    assert out.stat().st_size > 10_000 and out.read_bytes()[:4] == b"\x89PNG"
    assert "test NLL on 8gaussians" in capsys.readouterr().out


def test_density_2d_tutorial_rejects_bad_steps():
    with pytest.raises(SystemExit):
        _load("density_2d").main(["--steps", "0"])
