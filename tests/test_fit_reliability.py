"""``fit`` validates its options and tells a non-finite loss from other errors by the values."""

from __future__ import annotations

import logging
import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer.autoguide import AutoNormal

from pyroflows.infer import AutoFlow, fit
from pyroflows.training import NonFiniteLossError

from .test_fit import normal_model  # the root conftest empties the param store before each test


@pytest.mark.parametrize(
    "options, message",
    [
        ({"clip_norm": -1.0}, "clip_norm"),
        ({"clip_norm": 0.0}, "clip_norm"),
        ({"clip_norm": math.nan}, "clip_norm"),
        ({"early_stopping": -5}, "early_stopping"),
        ({"early_stopping": 2.5}, "early_stopping"),
        ({"max_seconds": -1.0}, "max_seconds"),
        ({"max_seconds": math.nan}, "max_seconds"),
        ({"lr": math.nan}, "lr"),
        ({"lr": math.inf}, "lr"),
        ({"num_particles": True}, "num_particles"),
    ],
)
def test_every_bad_option_is_refused_with_its_name(options, message):
    with pytest.raises(ValueError, match=message):
        fit(normal_model, AutoNormal(normal_model), torch.zeros(3), num_steps=5, progress=False, **options)


def test_a_shape_error_in_a_site_whose_name_contains_inf_or_nan_is_not_called_non_finite():
    calls = []

    def model(data):
        rate = pyro.sample("rate", dist.Normal(0.0, 1.0))
        extra = len(calls) > 2  # from the third step on, the site's shape is wrong
        calls.append(None)
        with pyro.plate("infection_data", len(data)):
            pyro.sample("infection_count", dist.Normal(rate * torch.ones(len(data) + extra), 1.0), obs=data)

    def guide(data):
        pyro.sample("rate", dist.Normal(pyro.param("q_loc", torch.tensor(0.0)), 1.0))

    with pytest.raises((ValueError, RuntimeError)) as info:
        fit(model, guide, torch.zeros(4), num_steps=5, num_particles=1, progress=False)
    assert "infection" in str(info.value) and not isinstance(info.value, NonFiniteLossError)


@pytest.mark.parametrize("validate", [True, False])
def test_a_nan_at_the_first_step_is_a_non_finite_loss_without_a_particles_warning(validate, recwarn):
    def model():
        loc = pyro.sample("loc", dist.Normal(0.0, 1.0))
        pyro.sample("obs", dist.Normal(loc * torch.tensor(math.nan), 1.0), obs=torch.tensor(0.0))

    with pyro.validation_enabled(validate), pytest.raises(NonFiniteLossError, match="step 0"):
        fit(model, AutoNormal(model), num_steps=3, progress=False)
    assert not [w for w in recwarn if "particles" in str(w.message)]


def test_a_failing_autoflow_set_up_shows_its_own_error_every_time():
    def model():
        pyro.sample("x", dist.Normal(torch.zeros(2), 1.0).to_event(1))
        pyro.sample("k", dist.Poisson(3.0))  # AutoFlow refuses discrete latents after the prototype trace

    guide = AutoFlow(model)
    for _ in range(2):
        with pytest.raises((ValueError, TypeError), match="k"):
            fit(model, guide, num_steps=3, progress=False)


@pytest.mark.filterwarnings("ignore:fit stopped")  # 30 steps: the default stop rule stops at its cap
def test_fit_keeps_pyro_plate_guess_and_progress_redraws_out_of_logs(caplog, capsys):
    data = torch.zeros(3)
    with caplog.at_level(logging.INFO, logger="pyro"):
        fit(normal_model, AutoNormal(normal_model), data, num_steps=30, progress=True)
    assert not [r for r in caplog.records if "max_plate_nesting" in r.getMessage()]
    captured = capsys.readouterr()
    assert "fit:" not in captured.err + captured.out  # not a terminal: no bar
