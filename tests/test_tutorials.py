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


@pytest.mark.filterwarnings("ignore:fit stopped")  # 150 steps: the stop rule ends at its cap
def test_flow_guides_tutorial_runs_and_flow_beats_mean_field(tmp_path, capsys):
    results = _load("flow_guides").main(["--steps", "150", "--out", str(tmp_path / "pairs.png")])
    diamonds = results["diamonds"]
    # Even after a few steps the Laplace-warm-started flow is far closer on diamonds.
    assert diamonds["flow"]["comparison"].max_mean_error < diamonds["mean-field"]["comparison"].max_mean_error
    assert (tmp_path / "pairs.png").stat().st_size > 10_000
    assert "eight_schools" in capsys.readouterr().out


def test_vae_tutorial_reports_a_finite_test_elbo_for_each_vae(capsys):
    results = _load("vae_digits").main(["--steps", "30", "--hidden", "32"])
    assert set(results) == {"gaussian", "flow posterior", "flow posterior + prior"}
    # 64 pixels, Binomial(16): a uniform model scores 64 * log(17), about -181 nats per image.
    assert all(math.isfinite(v) and -600 < v < 0 for v in results.values())
    assert "test ELBO" in capsys.readouterr().out


def test_free_form_tutorial_trains_three_flows_and_plots(tmp_path, capsys):
    out = tmp_path / "free_form.png"
    results = _load("free_form_2d").main(["--steps", "15", "--out", str(out)])
    assert set(results) == {"NSF", "residual flow", "FFJORD"}
    assert all(math.isfinite(v) for v in results.values())
    assert out.stat().st_size > 10_000
    assert "FFJORD" in capsys.readouterr().out


def test_flow_matching_2d_tutorial_reflows_to_one_step(tmp_path, capsys):
    out = tmp_path / "fm.png"
    results = _load("flow_matching_2d").main(["--steps", "200", "--out", str(out)])
    assert set(results) == {"independent", "OT", "OT + distilled"}
    # OT paths are nearly straight; distillation makes one step about as good as many
    assert results["OT"]["straightness"] < 0.2 < results["independent"]["straightness"]
    assert results["OT + distilled"]["w2_1_step"] < results["independent"]["w2_1_step"]
    assert all(math.isfinite(r["test_nll"]) for r in results.values())
    assert out.stat().st_size > 10_000
    assert "OT + distilled" in capsys.readouterr().out


def test_discrete_flow_matching_tutorial_learns_markov_source_and_digits(tmp_path):
    out = tmp_path / "discrete.png"
    args = ["--steps", "150", "--dim", "32", "--depth", "1", "--width", "16", "--sample-steps", "16", "--out", str(out)]
    results = _load("discrete_flow_matching").main(args)
    # a short run: the ELBO bounds the true entropy, and digits (quick to learn) beat the uniform model
    assert results["true entropy / token"] - 0.05 < results["test ELBO / token"] < 1.02 * math.log(20)
    assert math.isfinite(results["sample NLL / token"]) and results["bigram TV to test"] < 0.5
    assert 0 < results["ordered KL to source / token"] < results["ordered sample NLL / token"]
    assert results["digits test ELBO / pixel"] < 0.8 * math.log(17)
    assert out.stat().st_size > 5_000


def test_flow_matching_digits_tutorial_guided_samples_follow_labels(tmp_path):
    out = tmp_path / "digits.png"
    results = _load("flow_matching_digits").main(
        ["--steps", "150", "--width", "16", "--sample-steps", "8", "--out", str(out)]
    )
    # chance is 10%; even a short run follows the labels, and guidance does not hurt
    assert results["unguided"] > 0.3 and results["guidance 1"] >= results["unguided"] - 0.05
    assert out.stat().st_size > 5_000


def test_glow_digits_tutorial_trains_and_writes_pictures(tmp_path):
    out = tmp_path / "glow"
    results = _load("glow_digits").main(["--epochs", "6", "--steps", "2", "--hidden", "16", "--out", str(out)])
    # log2(17) = 4.09 bits is the uniform model; a short run is well below it
    assert results["test bits/dim"] < 3.2 and results["reconstruction error"] < 1e-4
    assert (out / "samples.png").stat().st_size > 2_000 and (out / "bpd.png").stat().st_size > 5_000
    assert (out / "checkpoint.pt").exists()
