"""The mkdocs site builds, API reference included."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_mkdocs_builds_strict(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "site" / "api" / "transforms" / "index.html").exists()


def test_readme_python_snippets_run(tmp_path, monkeypatch):
    import re

    monkeypatch.chdir(tmp_path)
    import torch

    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    assert len(blocks) >= 3
    namespace: dict = {}
    exec(blocks[0].replace("range(2000)", "range(3)"), namespace)  # noqa: S102 - our own README
    exec(blocks[1], namespace)  # noqa: S102
    assert namespace["d"].log_prob(torch.randn(10, 3)).shape == (10,)
    exec(blocks[2].replace("x, y)  # stops", "x, y, num_steps=300, progress=False)  # stops"), namespace)  # noqa: S102
    assert 0 < len(namespace["losses"]) <= 300  # the stop rule's cap
    exec(blocks[3].replace("steps=3000)", "steps=20, progress=False)"), namespace)  # noqa: S102
    assert namespace["log_p"].shape == (100,)
    small = blocks[4].replace("steps=2000)", "steps=3, progress=False)").replace("10_000", "300")
    small = small.replace("SequenceTransformer(21, 32, 20,", "SequenceTransformer(21, 32, 20, dim=16, depth=1,")
    assert "dim=16" in small  # the README's network is still the one shrunk here
    exec(small, namespace)  # noqa: S102
    assert namespace["sequences"].shape == (100, 32) and namespace["nats_per_token"] > 0
    assert namespace["ordered"].shape == (100, 32) and namespace["exact_nats_per_token"] > 0
    small = blocks[5].replace("epochs=60", "epochs=1, progress=False").replace("steps_per_scale=8", "steps_per_scale=1")
    exec(small, namespace)  # noqa: S102
    assert 0 < namespace["bits"] < 4.5 and (tmp_path / "glow_samples.png").exists()


def test_flow_matching_page_example_runs():
    import re

    block = re.findall(r"```python\n(.*?)```", (ROOT / "docs" / "flow_matching.md").read_text(), re.S)[0]
    namespace: dict = {}
    exec(block.replace("steps=200", "steps=20"), namespace)  # noqa: S102 - our own docs
    assert namespace["log_p"].shape == (100,) and namespace["prior"].sample((2,)).shape == (2, 2)


def test_discrete_page_example_runs():
    import re

    block = re.findall(r"```python\n(.*?)```", (ROOT / "docs" / "discrete.md").read_text(), re.S)[0]
    namespace: dict = {}
    exec(block.replace("steps=500", "steps=5").replace("10_000", "500"), namespace)  # noqa: S102 - our own docs
    assert namespace["samples"].shape == (500, 32) and namespace["elbo"] > 0
    assert namespace["ordered"].shape == (500, 32) and namespace["kl"] > 0


def test_images_page_example_runs(tmp_path, monkeypatch):
    import re

    monkeypatch.chdir(tmp_path)
    block = re.findall(r"```python\n(.*?)```", (ROOT / "docs" / "images.md").read_text(), re.S)[0]
    small = block.replace("epochs=60", "epochs=2, progress=False").replace("steps_per_scale=8", "steps_per_scale=2")
    namespace: dict = {}
    exec(small, namespace)  # noqa: S102 - our own docs
    assert namespace["history"].test_bpd[-1] < 4.09 and namespace["samples"].shape == (16, 1, 8, 8)
    assert (tmp_path / "samples.png").exists()
