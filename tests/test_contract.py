"""Every public layer passes every check of the transform contract."""

from __future__ import annotations

import pytest
import torch

from pyroflows import testing, transforms
from pyroflows.transforms import ConditionalFlowTransform, FlowTransform

from .cases import CASES, NOT_LAYERS


@pytest.mark.parametrize("check", list(testing.CHECKS), ids=str)
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_contract_float64(case, check):
    testing.CHECKS[check](case, torch.float64)


@pytest.mark.parametrize("check", ["shapes", "inverse", "cache", "gradients"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_contract_float32_smoke(case, check):
    testing.CHECKS[check](case, torch.float32)


def test_every_public_layer_has_a_case():
    public = {
        obj
        for name in transforms.__all__
        if isinstance(obj := getattr(transforms, name), type)
        and issubclass(obj, (FlowTransform, ConditionalFlowTransform))
    } - NOT_LAYERS
    covered = set()
    for case in CASES:
        covered.add(type(case.build()))
        covered.update(case.covers)
    missing = sorted(cls.__name__ for cls in public - covered)
    assert not missing, f"public layers without a harness case: {missing}"


def test_check_transform_reports_a_broken_layer():
    class Broken(transforms.AffineCoupling):
        def _inverse_and_log_det(self, y, context):
            x, log_det = super()._inverse_and_log_det(y, context)
            return x + 1e-3, log_det

    case = testing.TransformCase("broken", lambda: Broken(4))
    with pytest.raises(AssertionError, match="inverse"):
        testing.check_transform(case)
