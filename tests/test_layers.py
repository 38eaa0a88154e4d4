"""Layer-specific behaviour beyond the shared contract."""

from __future__ import annotations

import io

import torch

from pyroflows.transforms import ActNorm, AffineAutoregressive, BatchNorm, LULinear, SplineAutoregressive


def _perturb(module, scale=0.2):
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn_like(p))
    return module


def test_maf_is_the_inverse_of_iaf_with_the_same_parameters():
    torch.manual_seed(0)
    for cls in (AffineAutoregressive, SplineAutoregressive):
        iaf = _perturb(cls(4, mode="iaf").double())
        maf = cls(4, mode="maf").double()
        maf.load_state_dict(iaf.state_dict())
        x = torch.randn(6, 4, dtype=torch.float64)
        y, log_det = iaf.forward_and_log_det(x)
        x_maf, log_det_maf = maf.forward_and_log_det(y)
        torch.testing.assert_close(x_maf, x)
        torch.testing.assert_close(log_det_maf, -log_det)


def test_actnorm_standardises_its_first_batch_and_keeps_the_flag_through_save_load():
    layer = ActNorm(3)
    data = torch.randn(500, 3) * torch.tensor([1.0, 10.0, 0.1]) + torch.tensor([5.0, -2.0, 0.0])
    x, _ = layer.inverse_and_log_det(data)
    torch.testing.assert_close(x.mean(0), torch.zeros(3), atol=1e-4, rtol=0)
    torch.testing.assert_close(x.std(0, unbiased=False), torch.ones(3), atol=1e-4, rtol=0)
    buffer = io.BytesIO()
    torch.save(layer.state_dict(), buffer)
    buffer.seek(0)
    restored = ActNorm(3)
    restored.load_state_dict(torch.load(buffer))
    assert bool(restored.initialized)
    other = torch.randn(7, 3)
    torch.testing.assert_close(restored.inverse_and_log_det(other)[0], layer.inverse_and_log_det(other)[0])


def test_batchnorm_uses_batch_statistics_in_training_and_running_ones_in_eval():
    torch.manual_seed(0)
    layer = BatchNorm(2, momentum=0.5)
    data = torch.randn(1000, 2) * 3 + 1
    x, log_det = layer.inverse_and_log_det(data)
    torch.testing.assert_close(x.mean(0), torch.zeros(2), atol=1e-5, rtol=0)
    torch.testing.assert_close(layer.running_mean, 0.5 * data.mean(0))
    expected = 0.5 * torch.log(data.var(0, unbiased=False) + layer.eps).sum()
    torch.testing.assert_close(log_det, expected.expand(1000))
    layer.eval()
    x_eval, _ = layer.inverse_and_log_det(data)
    torch.testing.assert_close(layer.forward_and_log_det(x_eval)[0], data, atol=1e-5, rtol=0)


def test_lu_linear_weight_and_log_det():
    torch.manual_seed(0)
    layer = _perturb(LULinear(4, random_permutation=True).double(), 0.5)
    x = torch.randn(3, 4, dtype=torch.float64)
    y, log_det = layer.forward_and_log_det(x)
    weight = layer.weight()
    torch.testing.assert_close(y, x @ weight.T)
    torch.testing.assert_close(log_det, torch.linalg.slogdet(weight)[1].expand(3))


def test_dense_nn_params_major_is_the_same_network():
    from pyroflows.nn.dense import DenseNN

    torch.manual_seed(0)
    plain = DenseNN(3, (4, 5), (8, 8), context_dim=None).double()
    major = DenseNN(3, (4, 5), (8, 8), params_major=True).double()
    for p in plain.parameters():
        torch.nn.init.normal_(p)
    major.load_state_dict(plain.state_dict())
    for rows in (7, 2100):  # 2 x 2100 x 4 units: over the size where the layout switches
        x = torch.randn(2, rows, 3, dtype=torch.float64, requires_grad=True)
        a, b = plain(x), major(x)
        assert b.shape == a.shape == (2, rows, 4, 5)
        assert b.stride(-1) == (2 * rows * 4 if rows > 7 else 1)
        torch.testing.assert_close(a, b, atol=1e-12, rtol=0)
        w = torch.randn_like(a)
        ga = torch.autograd.grad((a * w).sum(), [x, *plain.parameters()])
        gb = torch.autograd.grad((b * w).sum(), [x, *major.parameters()])
        for u, v in zip(ga, gb, strict=True):
            torch.testing.assert_close(u, v, atol=1e-12, rtol=0)


def test_transform_copied_is_the_same_map_in_either_parameter_layout():
    from pyroflows.transforms import SplineCoupling

    torch.manual_seed(0)
    layer = _perturb(SplineCoupling(4, mask="half", hidden_dims=(8,), transform_copied=True).double(), 0.5)
    y = 3 * torch.randn(2, 3000, 4, dtype=torch.float64)  # 2 x 3000 x 2 units: the parameter-major layout
    x, log_det = layer.inverse_and_log_det(y)
    x_rows, log_det_rows = zip(*(layer.inverse_and_log_det(row) for row in y.flatten(0, 1)[:50]), strict=True)
    torch.testing.assert_close(x.flatten(0, 1)[:50], torch.stack(x_rows), atol=1e-12, rtol=0)
    torch.testing.assert_close(log_det.flatten()[:50], torch.stack(log_det_rows), atol=1e-12, rtol=0)
    torch.testing.assert_close(layer(x), y, atol=1e-9, rtol=0)


def test_transform_copied_fits_a_copied_marginal_a_plain_coupling_cannot():
    import pyro.distributions as dist

    from pyroflows import FlowDistribution
    from pyroflows.transforms import SplineCoupling

    torch.manual_seed(0)
    first = torch.distributions.Gamma(2.0, 1.0).sample((4096,)) - 2  # skewed: the copied element
    data = torch.stack([first, first.square() / 4 + 0.3 * torch.randn(4096)], -1)
    base = dist.Normal(torch.zeros(2), torch.ones(2)).to_event(1)
    nlls = {}
    for copied in (False, True):
        torch.manual_seed(1)
        layer = SplineCoupling(2, mask="half", hidden_dims=(32, 32), transform_copied=copied)
        model = FlowDistribution(base, layer)
        optimizer = torch.optim.Adam(layer.parameters(), lr=1e-2)
        for _ in range(300):
            loss = -model.log_prob(data).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        nlls[copied] = -model.log_prob(data).mean().item()
    # a plain coupling leaves the copied element's N(0, 1) marginal as it is
    assert nlls[True] < nlls[False] - 0.15, nlls


def test_inverse_needs_a_flow_layer():
    import pytest

    from pyroflows.transforms import Inverse

    with pytest.raises(TypeError, match="Inverse needs a FlowTransform, got Linear"):
        Inverse(torch.nn.Linear(2, 2))


def test_conditional_made_lets_the_context_reach_every_output_and_keeps_the_inputs_autoregressive():
    from pyroflows.nn.made import MADE

    torch.manual_seed(0)
    made = _perturb(MADE(3, 2, (16, 16), context_dim=4), scale=0.5)
    x, c = torch.randn(3), torch.randn(4, requires_grad=True)
    jac_x, jac_c = torch.autograd.functional.jacobian(lambda x, c: made(x, c), (x, c))
    # jac_x[i, k, j]: output i's k-th parameter in input j: only earlier inputs
    assert torch.all(jac_x.abs().sum(1).triu() == 0)
    assert torch.all(jac_c.abs().sum((1, 2)) > 0)  # the first element's parameters too (nflows#85)


def test_made_params_major_is_the_same_network():
    from pyroflows.nn.made import MADE

    torch.manual_seed(0)
    plain = _perturb(MADE(3, 5, (8, 8), context_dim=2).double(), scale=0.5)
    major = MADE(3, 5, (8, 8), context_dim=2, params_major=True).double()
    major.load_state_dict(plain.state_dict())
    x, c = torch.randn(3000, 3, dtype=torch.float64), torch.randn(3000, 2, dtype=torch.float64)
    a, b = plain(x, c), major(x, c)
    assert b.stride(-1) == 3000 * 3  # parameter-first in memory
    torch.testing.assert_close(a, b, atol=1e-12, rtol=0)
    w = torch.randn_like(a)
    ga = torch.autograd.grad((a * w).sum(), list(plain.parameters()))
    gb = torch.autograd.grad((b * w).sum(), list(major.parameters()))
    for u, v in zip(ga, gb, strict=True):
        torch.testing.assert_close(u, v, atol=1e-10, rtol=0)
