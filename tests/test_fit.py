import math
import time

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer.autoguide import AutoNormal

from pyroflows.infer import fit
from pyroflows.training import NonFiniteLossError, warmup_cosine


def normal_model(data):
    loc = pyro.sample("loc", dist.Normal(0.0, 10.0))
    with pyro.plate("data", len(data)):
        pyro.sample("obs", dist.Normal(loc, 1.0), obs=data)


def test_fits_any_guide_and_loss_decreases():
    data = torch.randn(50) + 4.0
    guide = AutoNormal(normal_model)
    losses = fit(normal_model, guide, data, num_steps=400, lr=0.05, progress=False, seed=0)
    assert losses.shape == (400,) and np.isfinite(losses).all()
    assert losses[-50:].mean() < losses[:50].mean() - 10
    exact_mean = data.sum() / (len(data) + 0.01)
    assert abs(guide.median(data)["loc"] - exact_mean) < 0.1


def test_custom_guide_with_pyro_params():
    def guide(data):
        loc = pyro.param("q_loc", torch.tensor(0.0))
        scale = pyro.param("q_scale", torch.tensor(1.0), constraint=dist.constraints.positive)
        pyro.sample("loc", dist.Normal(loc, scale))

    data = torch.randn(50) + 4.0
    fit(normal_model, guide, data, num_steps=300, lr=0.05, progress=False, seed=0)
    assert abs(pyro.param("q_loc").item() - data.mean().item()) < 0.2


def test_the_guide_keeps_the_average_of_its_last_iterates():
    history = []

    def guide(data):
        loc = pyro.param("q_loc", torch.tensor(0.0))
        history.append(loc.item())
        pyro.sample("loc", dist.Normal(loc, 1.0))

    data = torch.randn(20) + 4.0
    options = {"num_steps": 40, "lr": 0.5, "num_particles": 1, "progress": False, "seed": 0, "stop": None}
    fit(normal_model, guide, data, average=0.0, **options)
    iterates = history[1:] + [pyro.param("q_loc").item()]  # the value after each step
    pyro.clear_param_store()
    fit(normal_model, guide, data, average=0.25, **options)
    assert pyro.param("q_loc").item() == pytest.approx(np.mean(iterates[-10:]), abs=1e-5)
    assert pyro.param("q_loc").item() != pytest.approx(iterates[-1], abs=1e-4)


@pytest.mark.parametrize("validate", [True, False])
def test_non_finite_loss_restores_parameters_and_raises(validate):
    history = []

    def model():
        loc = pyro.sample("loc", dist.Normal(10.0, 1.0))  # pulls q_loc upwards
        pyro.factor("bad", torch.where(loc > 0.5, torch.tensor(math.nan), torch.tensor(0.0)))

    def guide():
        loc = pyro.param("q_loc", torch.tensor(0.0))
        history.append(loc.item())
        pyro.sample("loc", dist.Delta(loc))

    with pyro.validation_enabled(validate), pytest.raises(NonFiniteLossError, match="non-finite .* at step"):
        fit(model, guide, num_steps=1000, lr=0.1, num_particles=1, progress=False)
    # back at the value of the last step whose loss was finite (the guide may run again to check the value)
    first_bad = next(i for i, value in enumerate(history) if value > 0.5)
    assert pyro.param("q_loc").item() == pytest.approx(history[first_bad - 1])
    assert pyro.param("q_loc").item() <= 0.5


def test_early_stopping_and_time_limit():
    data = torch.randn(20)
    losses = fit(
        normal_model,
        AutoNormal(normal_model),
        data,
        num_steps=20000,
        lr=0.05,
        early_stopping=200,
        progress=False,
        seed=0,
    )
    assert len(losses) < 20000
    pyro.clear_param_store()
    start = time.perf_counter()
    fit(normal_model, AutoNormal(normal_model), data, num_steps=10**6, max_seconds=1.0, progress=False)
    assert time.perf_counter() - start < 5


def test_learning_rate_schedule():
    assert warmup_cosine(0, 100, 0.1, 0.05) == pytest.approx(0.1)
    assert warmup_cosine(9, 100, 0.1, 0.05) == pytest.approx(1.0)
    assert warmup_cosine(99, 100, 0.1, 0.05) == pytest.approx(0.05, abs=1e-3)


@pytest.mark.parametrize(
    "options, message",
    [
        ({"num_steps": 0}, "num_steps"),
        ({"lr": -1.0}, "lr"),
        ({"num_particles": 1.5}, "num_particles"),
        ({"warmup": 1.0}, "warmup"),
        ({"final_lr": 0.0}, "final_lr"),
        ({"average": 1.0}, "average"),
    ],
)
def test_bad_options_raise(options, message):
    with pytest.raises(ValueError, match=message):
        fit(normal_model, AutoNormal(normal_model), torch.zeros(3), progress=False, **options)


@pytest.mark.filterwarnings("ignore:fit stopped")  # 5 steps: the stop rule ends at its cap
def test_unvectorisable_model_falls_back_to_sequential_particles():
    def loop_model(data):
        loc = pyro.sample("loc", dist.Normal(0.0, 1.0))
        for i in range(len(data)):  # no plate, and a shape that breaks with a particle dim
            pyro.sample(f"obs_{i}", dist.Normal(loc.reshape(()), 1.0), obs=data[i])

    with pytest.warns(UserWarning, match="sequential particles"):
        losses = fit(loop_model, AutoNormal(loop_model), torch.zeros(3), num_steps=5, progress=False)
    assert len(losses) == 5
