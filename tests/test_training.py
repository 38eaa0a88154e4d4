"""The training engine: checkpoints that resume a run exactly, and the loop's stopping rules."""

from __future__ import annotations

import pytest
import torch

from pyroflows.datasets import toy_2d
from pyroflows.discrete import DiscreteFlowMatcher, MixturePath, train_discrete
from pyroflows.matching import FlowMatcher, train_matcher
from pyroflows.nn.tokens import SequenceTransformer
from pyroflows.nn.velocity import TimeMLP
from pyroflows.training import Trainer

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
