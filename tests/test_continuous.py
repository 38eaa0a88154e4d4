import pytest
import torch

from pyroflows import flows
from pyroflows.transforms import ContinuousFlow


def perturbed(**options):
    torch.manual_seed(0)
    flow = ContinuousFlow(3, hidden_dims=(16,), **options).double()
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return flow


@pytest.mark.parametrize("noise", ["gaussian", "rademacher"])
def test_hutchinson_log_det_is_unbiased(noise):
    exact = perturbed(method="rk4", step_size=0.1)
    hutch = perturbed(method="rk4", step_size=0.1, trace="hutchinson", noise=noise)
    x = torch.randn(3, 3, dtype=torch.float64)
    with torch.no_grad():
        target = exact.forward_and_log_det(x)[1]
        draws = torch.stack([hutch._forward_and_log_det(x, None)[1] for _ in range(400)])
    z = (draws.mean(0) - target).abs() / (draws.std(0) / len(draws) ** 0.5)
    assert z.max() < 4.5


def test_adjoint_gradients_match_direct_backprop():
    direct = perturbed(rtol=1e-9, atol=1e-9)
    adjoint = perturbed(rtol=1e-9, atol=1e-9, adjoint=True)
    x = torch.randn(4, 3, dtype=torch.float64)
    grads = []
    for flow in (direct, adjoint):
        y, log_det = flow.forward_and_log_det(x)
        grads.append(torch.autograd.grad((y**2).sum() + log_det.sum(), list(flow.parameters())))
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_nfe_and_rnode_regularisers_are_exposed():
    flow = perturbed(regularize=True)
    x = torch.randn(5, 3, dtype=torch.float64)
    y, _ = flow.forward_and_log_det(x)
    assert flow.last_nfe > 0
    reg = flow.last_regularization
    assert set(reg) == {"kinetic", "jacobian_frobenius"} and reg["kinetic"].shape == (5,)
    assert (reg["kinetic"] > 0).all() and (reg["jacobian_frobenius"] > 0).all()
    # kinetic energy of a straight path is at least |y - x|^2
    assert (reg["kinetic"] >= (y - x).pow(2).sum(-1) - 1e-6).all()


def test_solve_returns_what_it_measured_and_inverts():
    flow = perturbed(regularize=True)
    x = torch.randn(5, 3, dtype=torch.float64)
    forward = flow.solve(x)
    y, log_det = flow.forward_and_log_det(x)
    torch.testing.assert_close((forward.value, forward.log_det), (y, log_det))
    assert forward.nfe == flow.last_nfe > 0 and forward.regularization["kinetic"].shape == (5,)
    back = flow.solve(forward.value, inverse=True)
    torch.testing.assert_close((back.value, back.log_det), (x, -log_det), rtol=1e-4, atol=1e-4)
    assert perturbed().solve(x).regularization == {}


def test_regularisers_do_not_change_the_solve():
    x = torch.randn(5, 3, dtype=torch.float64)
    plain, regularized = perturbed(), perturbed(regularize=True)
    for adjoint in (False, True):
        plain.adjoint = regularized.adjoint = adjoint
        y, log_det = plain.forward_and_log_det(x)
        y_reg, log_det_reg = regularized.forward_and_log_det(x)
        assert regularized.last_nfe == plain.last_nfe
        torch.testing.assert_close((y_reg, log_det_reg), (y, log_det))
        log_det_reg.sum().backward()  # the adjoint solve accepts the custom error norm


def test_ffjord_factory_learns_a_shifted_gaussian():
    torch.manual_seed(0)
    import pyro.distributions as dist

    flow = flows.ffjord(2, hidden_dims=(32,), rtol=1e-4, atol=1e-4)
    base = dist.Normal(torch.zeros(2), 1.0).to_event(1)
    model = dist.TransformedDistribution(base, flow)
    data = torch.randn(2000, 2) * 0.5 + torch.tensor([1.0, -1.0])
    opt = torch.optim.Adam(flow.parameters(), lr=1e-2)
    for _ in range(150):
        loss = -model.log_prob(data[torch.randint(2000, (256,))]).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        nll = -model.log_prob(data).mean()
    exact = -dist.Normal(torch.tensor([1.0, -1.0]), 0.5).to_event(1).log_prob(data).mean()
    assert nll < exact + 0.15


def test_bad_options():
    with pytest.raises(ValueError, match="trace"):
        ContinuousFlow(2, trace="frobenius")
    with pytest.raises(ValueError, match="noise"):
        ContinuousFlow(2, noise="uniform")


@pytest.mark.parametrize("trace", ["exact", "hutchinson"])
@pytest.mark.parametrize("activation", [torch.nn.Tanh, torch.nn.Sigmoid])
def test_linearized_dynamics_equal_the_autograd_ones(trace, activation):
    """The concat-squash MLP's ``linearize`` gives the same trace, penalties and gradients as autograd."""
    from pyroflows.nn import ConcatSquashMLP

    torch.manual_seed(0)
    net = ConcatSquashMLP(3, (16, 16), context_dim=2, activation=activation).double()
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.3 * torch.randn_like(p))

    class Opaque(torch.nn.Module):  # the same field, without linearize: autograd traces
        def __init__(self):
            super().__init__()
            self.net = net

        def forward(self, x, t, context=None):
            return self.net(x, t, context)

    x, context = torch.randn(4, 3, dtype=torch.float64), torch.randn(4, 2, dtype=torch.float64)
    results = []
    for velocity in (net, Opaque()):
        flow = ContinuousFlow(3, context_dim=2, velocity=velocity, trace=trace, regularize=True).double()
        torch.manual_seed(1)
        y, log_det = flow.forward_and_log_det(x, context)
        penalty = sum(v.sum() for v in flow.last_regularization.values())
        loss = y.square().sum() + log_det.sum() + penalty
        results.append([y, log_det, penalty, *torch.autograd.grad(loss, list(net.parameters()))])
    for a, b in zip(*results, strict=True):
        assert torch.allclose(a, b, atol=1e-8)
