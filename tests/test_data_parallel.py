"""Data-parallel SVI (issue 24): two gloo processes against one."""

import math
import subprocess
import sys
from pathlib import Path

import pyro
import pytest
import torch

from pyroflows.distributed import shard
from pyroflows.infer import fit

from .svi_worker import GROUPS, GUIDES, data, plate_aware, regression, run


def test_two_processes_take_the_same_steps_as_one_on_the_whole_batch(tmp_path):
    out = tmp_path / "svi.pt"
    worker = Path(__file__).with_name("svi_worker.py")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    result = subprocess.run([*cmd, str(worker), str(out)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    parallel = torch.load(out)
    assert parallel["world"] == 2
    assert "holds the latents ['effect']" in parallel["refused"]
    defaults = parallel["defaults"]  # fit's defaults: one particle count and one stop for all processes
    assert defaults["steps"] < 1000 and torch.equal(defaults["params"][0], defaults["params"][1])
    # a plate-aware AutoFlow whose groups plate is numbered across the processes: each holds half the
    # groups; the globals' posterior matches one process's on all groups within Monte Carlo error
    single = plate_aware(torch.arange(GROUPS))
    for name, (mean, sd) in single.items():
        both_mean, both_sd = parallel["plate_aware"][name]
        assert abs(both_mean - mean) < 0.2 * sd and abs(math.log(both_sd / sd)) < 0.1, (name, single, parallel)
    assert "the guide runs other members" in parallel["mismatched"]
    # a checkpointed run killed and resumed ends as the straight run, on each process (each has its own RNG)
    assert parallel["resumed"] == [True, True]
    # a NaN in one process's shard: that process says so, the other says which step another process failed at
    nan_errors = parallel["nan_errors"]
    assert nan_errors[1].startswith("NonFiniteLossError: non-finite loss"), nan_errors
    assert nan_errors[0] == "RuntimeError: another data-parallel process failed at step 0; its own error says why"
    # max_seconds on clocks that disagree (process 1's runs twice as fast): both stop at the same step
    clocks = parallel["fast_clock"]
    assert clocks[0]["steps"] == clocks[1]["steps"] < 10**6 and torch.equal(clocks[0]["params"], clocks[1]["params"])
    x, y = data()
    for name in GUIDES:
        single, both = run(name, x, y), parallel["results"][name]
        torch.testing.assert_close(both["losses"], single["losses"], rtol=1e-5, atol=1e-4, msg=name)
        assert single["params"].keys() == both["params"].keys()
        for key, value in single["params"].items():
            torch.testing.assert_close(both["params"][key], value, rtol=1e-4, atol=1e-4, msg=f"{name} {key}")


def test_shard_partitions_the_rows():
    x = torch.arange(10)
    parts = [shard(x, rank=r, world=3) for r in range(3)]
    assert torch.equal(torch.cat(parts), x) and [len(p) for p in parts] == [3, 3, 4]
    with pytest.raises(ValueError, match="same number of rows"):
        shard(x, torch.zeros(4), rank=0, world=2)
    with pytest.raises(ValueError, match="rank must be in"):
        shard(x, rank=2, world=2)


def test_a_single_process_ignores_data_plate():
    pyro.clear_param_store()
    x, y = data()
    from pyro.infer.autoguide import AutoNormal

    losses = fit(regression, AutoNormal(regression), x, y, num_steps=5, progress=False, stop=None, data_plate="rows")
    assert len(losses) == 5


def test_data_plate_must_name_a_plate():
    x, y = data()
    with pytest.raises(TypeError, match="data_plate must be a plate's name"):
        fit(regression, GUIDES["AutoNormal"](), x, y, num_steps=2, progress=False, data_plate=3)
