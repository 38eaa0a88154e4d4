"""num_particles="auto" (issue 24): as many particles as come almost free."""

import logging

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import Trace_ELBO
from pyro.infer.autoguide import AutoNormal

from pyroflows.infer import fit
from pyroflows.infer.particles import choose_particles


def normal_model():
    pyro.sample("x", dist.Normal(1.0, 2.0))


def branching_model():
    x = pyro.sample("x", dist.Normal(0.0, 1.0))
    if x > 0:  # Python control flow on a draw: does not vectorise
        pyro.sample("y", dist.Normal(x, 1.0), obs=torch.tensor(1.0))


def test_tolerance_decides_between_the_most_and_the_base_count():
    pyro.clear_param_store()
    guide = AutoNormal(normal_model)
    assert choose_particles(normal_model, guide, (), {}, tolerance=float("inf")) == 64
    assert choose_particles(normal_model, guide, (), {}, tolerance=1e-9) == 8


def test_a_model_that_does_not_vectorise_keeps_eight():
    pyro.clear_param_store()
    assert choose_particles(branching_model, AutoNormal(branching_model), (), {}) == 8


def test_fit_with_auto_particles_fits():
    pyro.clear_param_store()
    guide = AutoNormal(normal_model)
    losses = fit(normal_model, guide, num_steps=400, lr=0.05, num_particles="auto", progress=False, seed=0)
    assert len(losses) == 400
    assert abs(guide.median()["x"] - 1.0) < 0.2


def test_a_custom_loss_keeps_its_own_particles(caplog):
    with caplog.at_level(logging.INFO, logger="pyroflows.fit"):
        losses = fit(normal_model, AutoNormal(normal_model), num_steps=2, loss=Trace_ELBO(3), progress=False, stop=None)
    assert len(losses) == 2  # "auto" (the default) is not refused with loss=..., and times nothing
    assert not [r for r in caplog.records if "num_particles='auto'" in r.getMessage()]
    with pytest.raises(ValueError, match="num_particles"):
        fit(normal_model, AutoNormal(normal_model), num_steps=2, num_particles="many")
