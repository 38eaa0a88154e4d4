"""Empty batches, wrong dtypes and impossible solver tolerances: work or say what is wrong."""

from __future__ import annotations

import pyro.distributions as dist
import pytest
import torch

from pyroflows import flows
from pyroflows.distributions import FlowDistribution
from pyroflows.matching import FlowMatcher
from pyroflows.nn.velocity import TimeMLP
from pyroflows.transforms import ContinuousFlow


def matcher() -> FlowMatcher:
    torch.manual_seed(0)
    return FlowMatcher(TimeMLP(2, (8,)), (2,))


def test_flow_matcher_refuses_an_empty_batch_and_integer_data_by_name():
    fm = matcher()
    with pytest.raises(ValueError, match="non-empty batch"):
        fm.loss(torch.zeros(0, 2))
    with pytest.raises(TypeError, match="torch.int64"):
        fm.loss(torch.zeros(4, 2, dtype=torch.long))
    with pytest.raises(TypeError, match="torch.float64"):
        fm.loss(torch.zeros(4, 2, dtype=torch.float64))


@pytest.mark.parametrize("method", ["euler", "dopri5"])
def test_flow_matcher_samples_an_empty_batch(method):
    out = matcher().sample(torch.zeros(0, 2), method=method)
    assert out.shape == (0, 2)


@pytest.mark.parametrize("rtol, atol", [(0.0, 0.0), (-1e-3, 1e-5), (float("nan"), 1e-5)])
def test_impossible_tolerances_are_refused_before_the_solver_asserts(rtol, atol):
    with pytest.raises(ValueError, match="rtol|atol"):
        matcher().sample(4, method="dopri5", rtol=rtol, atol=atol)
    with pytest.raises(ValueError, match="rtol|atol"):
        ContinuousFlow(2, rtol=rtol, atol=atol)
    ContinuousFlow(2, method="rk4", rtol=rtol, atol=atol)  # fixed-step solvers ignore them


@pytest.mark.parametrize("name", ["nice", "nsf", "resflow", "ffjord"])
def test_flow_distribution_gives_an_empty_log_prob_for_an_empty_batch(name):
    base = dist.Normal(torch.zeros(3), 1.0).to_event(1)
    flow = FlowDistribution(base, getattr(flows, name)(3), validate_args=True)
    assert flow.log_prob(torch.zeros(0, 3)).shape == (0,)
    with pytest.raises(ValueError, match="event shape"):
        flow.log_prob(torch.zeros(0, 4))


def test_one_solver_list_serves_continuous_flows_and_flow_matching():
    fm = matcher()
    assert fm.sample(5, method="bosh3").shape == (5, 2)  # any adaptive solver, not only dopri5
    assert fm.sample(5, steps=4, method="heun3").shape == (5, 2)
    for bad in (lambda: fm.sample(5, method="tsit6"), lambda: ContinuousFlow(2, method="tsit6")):
        with pytest.raises(ValueError, match="method must be one of"):
            bad()
