"""The training engine: checkpoints that resume a run exactly, and the loop's stopping rules."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer.autoguide import AutoNormal, init_to_mean

from pyroflows.datasets import toy_2d
from pyroflows.discrete import DiscreteFlowMatcher, MixturePath, train_discrete
from pyroflows.infer import AutoFlow, StopRule, fit
from pyroflows.matching import FlowMatcher, train_matcher
from pyroflows.nn.tokens import SequenceTransformer
from pyroflows.nn.velocity import TimeMLP
from pyroflows.training import Trainer, load_checkpoint

from .discrete_cases import L, V, iid_data


def _matcher() -> FlowMatcher:
    torch.manual_seed(0)
    return FlowMatcher(TimeMLP(2, (16,)), (2,))


def _discrete() -> DiscreteFlowMatcher:
    torch.manual_seed(0)
    path = MixturePath(V, "mask")
    return DiscreteFlowMatcher(SequenceTransformer(path.input_vocab_size, L, V, dim=8, depth=1), path, L)


RUNS = {
    "matching": (_matcher, lambda: toy_2d("moons", 300), train_matcher, {"ema": 0.9}),
    "discrete": (_discrete, lambda: iid_data(200), train_discrete, {"ema": 0.9}),
}


@pytest.mark.parametrize("family", sorted(RUNS))
def test_a_checkpointed_run_resumed_to_its_end_equals_the_straight_run(family, tmp_path):
    make, data, train, options = RUNS[family]
    straight = make()
    torch.manual_seed(1)
    expected = train(straight, data(), 12, seed=0, progress=False, **options)

    path = tmp_path / "run.pt"
    first = make()
    torch.manual_seed(1)
    train(first, data(), 5, seed=0, progress=False, checkpoint=path, checkpoint_every=2, **options)
    resumed = make()
    torch.manual_seed(123)  # the checkpoint carries the random state on
    losses = train(resumed, data(), 12, seed=0, progress=False, checkpoint=path, **options)

    assert losses == expected
    for a, b in zip(resumed.parameters(), straight.parameters(), strict=True):
        assert torch.equal(a, b)


def test_a_damaged_checkpoint_is_named(tmp_path):
    path = tmp_path / "run.pt"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="corrupted or incomplete"):
        train_matcher(_matcher(), toy_2d("moons", 100), 3, progress=False, checkpoint=path)
    with pytest.raises(ValueError, match="checkpoint_every"):
        train_matcher(_matcher(), toy_2d("moons", 100), 3, progress=False, checkpoint=path, checkpoint_every=0)


def test_the_trainer_stops_on_steps_time_or_a_plateau():
    w = torch.nn.Parameter(torch.tensor(0.0))
    plateau = Trainer(torch.optim.SGD([w], lr=0.0), 10_000, early_stopping=50, progress=False)
    while plateau.running:
        plateau.step((w - 1) ** 2)
    assert plateau.stopped and 50 <= plateau.step_count < 200
    timed = Trainer(torch.optim.SGD([w], lr=0.1), 10**9, max_seconds=0.05, progress=False)
    while timed.running:
        timed.step((w - 1) ** 2)
    assert timed.stopped and timed.done() >= 1.0


class _Interrupt(BaseException):
    """Stands for a killed process: nothing in ``fit`` catches it."""


def _regression(calls: list | None = None):
    x = torch.linspace(-1, 1, 20)
    y = 0.5 + 2.0 * x + 0.3 * torch.randn(20, generator=torch.Generator().manual_seed(0))

    def model():
        if calls is not None:
            calls.append(1)
            if len(calls) == model.stop_at:
                raise _Interrupt
        a = pyro.sample("a", dist.Normal(0.0, 5.0))
        b = pyro.sample("b", dist.Normal(0.0, 5.0))
        with pyro.plate("rows", 20):
            pyro.sample("y", dist.Normal(a + b * x, 0.3), obs=y)

    model.stop_at = None
    return model


GUIDES = {"AutoNormal": lambda model: AutoNormal(model, init_loc_fn=init_to_mean), "AutoFlow": AutoFlow}


def _never_stopping_rule():  # checks every 4 steps (mid-run state to keep), never converges
    return StopRule(khat=1e-9, drift=1e-9, first=4, num_draws=50)


@pytest.mark.filterwarnings("ignore:fit stopped")
@pytest.mark.parametrize("with_rule", [False, True], ids=["fixed", "stop rule"])
@pytest.mark.parametrize("make_guide", list(GUIDES.values()), ids=list(GUIDES))
def test_fit_killed_after_a_checkpoint_resumes_to_the_uninterrupted_result(make_guide, with_rule, tmp_path):
    options = {"num_steps": 12, "num_particles": 2, "progress": False, "seed": 0}
    rule = _never_stopping_rule if with_rule else lambda: None
    model = _regression()
    pyro.clear_param_store()
    straight_guide = make_guide(model)
    straight_guide()  # set up as the killed run's guide is
    expected = fit(model, straight_guide, stop=rule(), **options)
    straight = {name: value.detach().clone() for name, value in pyro.get_param_store().items()}

    path, calls = tmp_path / "fit.pt", []
    killed = _regression(calls)
    pyro.clear_param_store()
    guide = make_guide(killed)
    guide()  # set up (AutoFlow's warm start runs the model many times), then count only the fit's runs
    calls[:], killed.stop_at = [], 9  # ELBO's plate guess and one run a step: dies in step 8
    with pytest.raises(_Interrupt):
        fit(killed, guide, checkpoint=path, checkpoint_every=5, stop=rule(), **options)
    assert load_checkpoint(path, ("trainer",))["trainer"]["step"] == 5
    pyro.clear_param_store()  # a new process
    model = _regression()
    resumed = fit(model, make_guide(model), checkpoint=path, stop=rule(), **options)

    assert resumed.tolist() == expected.tolist()
    for name, value in pyro.get_param_store().items():
        assert torch.equal(value, straight[name]), name


def test_a_resumed_fit_keeps_the_particle_count_of_the_interrupted_run(tmp_path, caplog):
    options = {"num_steps": 12, "progress": False, "seed": 0, "stop": None}
    model = _regression()
    pyro.clear_param_store()
    expected = fit(model, AutoNormal(model, init_loc_fn=init_to_mean), num_particles=16, **options)

    path, calls = tmp_path / "fit.pt", []
    killed = _regression(calls)
    pyro.clear_param_store()
    killed.stop_at = 9  # the ELBO's plate guess and one run a step: dies in step 8
    with pytest.raises(_Interrupt):
        fit(
            killed,
            AutoNormal(killed, init_loc_fn=init_to_mean),
            num_particles=16,
            checkpoint=path,
            checkpoint_every=5,
            **options,
        )
    assert load_checkpoint(path, ("particles",))["particles"] == {"num_particles": 16}
    pyro.clear_param_store()
    model = _regression()
    with caplog.at_level("INFO", logger="pyroflows.fit"):  # "auto", fit's default: the checkpoint's count, untimed
        resumed = fit(model, AutoNormal(model, init_loc_fn=init_to_mean), checkpoint=path, **options)
    assert resumed.tolist() == expected.tolist()
    assert not [r for r in caplog.records if "num_particles='auto'" in r.getMessage()]
