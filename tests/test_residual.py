import pytest
import torch

from pyroflows.nn import LipschitzMLP, SpectralNormLinear
from pyroflows.transforms import LogDetEstimator, Residual, ResidualNotConverged


@pytest.fixture
def block():
    torch.manual_seed(0)
    layer = Residual(4, hidden_dims=(16,), atol=1e-10).double()
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(0.5 * torch.randn_like(p))
    return layer


def estimates(block, estimator, y, n):
    return torch.stack([estimator(block.net, y)[1] for _ in range(n)])


@pytest.mark.parametrize("distribution", ["geometric", "poisson"])
@pytest.mark.parametrize("noise", ["gaussian", "rademacher"])
def test_roulette_log_det_is_unbiased(block, distribution, noise):
    torch.manual_seed(1)
    y = torch.randn(3, 4, dtype=torch.float64)
    exact = LogDetEstimator("exact")(block.net, y)[1]
    with torch.no_grad():
        draws = estimates(block, LogDetEstimator("roulette", distribution=distribution, noise=noise), y, 3000)
    se = draws.std(0) / len(draws) ** 0.5
    assert ((draws.mean(0) - exact).abs() / se).max() < 4.5


def test_truncated_series_estimates_its_truncated_sum(block):
    torch.manual_seed(2)
    y = 2 * torch.randn(2, 4, dtype=torch.float64)
    exact = LogDetEstimator("exact")(block.net, y)[1]
    with torch.no_grad():
        long = estimates(block, LogDetEstimator("series", num_terms=30), y, 1000)
        short = estimates(block, LogDetEstimator("series", num_terms=1), y, 1000)

    def z(draws, target):
        return ((draws.mean(0) - target).abs() / (draws.std(0) / len(draws) ** 0.5)).max()

    jac = torch.func.vmap(torch.func.jacrev(lambda v: block.net(v)))(y)
    trace = jac.diagonal(dim1=-2, dim2=-1).sum(-1)  # the one-term series: tr(J), not log det(I + J)
    assert z(long, exact) < 4.5
    assert z(short, trace.detach()) < 4.5
    assert (trace - exact).abs().max() > 1e-3


def test_neumann_gradient_is_unbiased(block):
    torch.manual_seed(3)
    y = torch.randn(2, 4, dtype=torch.float64)
    params = list(block.net.parameters())

    def grad_of(estimator):
        grads = torch.autograd.grad(estimator(block.net, y)[1].sum(), params, allow_unused=True)
        return torch.cat(
            [(torch.zeros_like(p) if g is None else g).reshape(-1) for p, g in zip(params, grads, strict=True)]
        )

    exact = grad_of(LogDetEstimator("exact"))
    draws = torch.stack([grad_of(LogDetEstimator("roulette", neumann_gradient=True)) for _ in range(2000)])
    se = draws.std(0) / len(draws) ** 0.5 + 1e-12
    assert ((draws.mean(0) - exact).abs() / se).max() < 5


def test_fixed_point_failure_raises_or_warns(block):
    x = 3 * torch.randn(5, 4, dtype=torch.float64)
    block.max_iterations = 1
    with pytest.raises(ResidualNotConverged, match="not converged"):
        block.forward_and_log_det(x)
    block.on_failure = "warn"
    with pytest.warns(UserWarning, match="not converged"):
        block.forward_and_log_det(x)


def test_spectral_norm_bounds_the_lipschitz_constant():
    torch.manual_seed(0)
    layer = SpectralNormLinear(8, 6, coeff=0.9)
    with torch.no_grad():
        layer.weight.mul_(10)
    assert torch.linalg.matrix_norm(layer.normalized_weight().detach(), ord=2) <= 0.9 + 1e-4
    net = LipschitzMLP(3, (32, 32), coeff=0.8)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p))
    a, b = torch.randn(500, 3), torch.randn(500, 3)
    ratio = (net(a) - net(b)).norm(dim=-1) / (a - b).norm(dim=-1)
    assert ratio.max() <= 0.8 + 1e-4


@pytest.mark.parametrize(
    "kwargs, message",
    [({"coeff": 1.0}, "coeff"), ({"on_failure": "ignore"}, "on_failure")],
)
def test_bad_options(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Residual(2, **kwargs)
    with pytest.raises(ValueError, match="method"):
        LogDetEstimator("hutchinson")


class _Opaque(torch.nn.Module):
    """A network without ``linearize``: everything goes through autograd."""

    def __init__(self, net):
        super().__init__()
        self.inner = net

    def forward(self, x, context=None):
        return self.inner(x, context)


@pytest.mark.parametrize("jacobian", ["linearized", "autograd"])
def test_sampling_direction_gradients_match_finite_differences(jacobian):
    """The fixed-point forward carries the exact implicit gradient."""
    torch.manual_seed(0)
    layer = Residual(3, hidden_dims=(8,), log_det=LogDetEstimator("exact"), atol=1e-13).double()
    if jacobian == "autograd":
        layer.net = _Opaque(layer.net)
    for m in layer.modules():
        if isinstance(m, SpectralNormLinear):
            m.tol, m.max_iterations, m.warm_iterations = 1e-15, 5000, 0
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(0.3 * torch.randn_like(p))
    x, w = torch.randn(5, 3, dtype=torch.float64), torch.randn(5, 3, dtype=torch.float64)

    def objective():
        y, log_det = layer.forward_and_log_det(x)
        return (y * w).sum() + log_det.sum()

    params = [p for p in layer.parameters()]
    grads = torch.autograd.grad(objective(), params, allow_unused=True)
    for p, g in zip(params, grads, strict=True):
        if g is None:
            continue
        with torch.no_grad():
            flat, eps = p.view(-1), 1e-5
            old = flat[0].item()
            flat[0] = old + eps
            up = objective().item()
            flat[0] = old - eps
            down = objective().item()
            flat[0] = old
        assert abs(g.view(-1)[0].item() - (up - down) / (2 * eps)) < 1e-6


def test_conv_residual_roulette_log_det_is_unbiased_and_inverts():
    from pyroflows.transforms import ConvResidual

    torch.manual_seed(0)
    layer = ConvResidual((2, 4, 4), hidden_channels=8, coeff=0.9, atol=1e-10).double()
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(0.3 * torch.randn_like(p))
    y = torch.randn(3, 2, 4, 4, dtype=torch.float64)
    exact = LogDetEstimator("exact")(layer.net, y, event_dim=3)[1]
    assert exact.shape == (3,) and exact.abs().min() > 1e-3
    with torch.no_grad():
        draws = torch.stack([LogDetEstimator("roulette")(layer.net, y, event_dim=3)[1] for _ in range(2000)])
    se = draws.std(0) / len(draws) ** 0.5
    assert ((draws.mean(0) - exact).abs() / se).max() < 4.5
    x, _ = layer.inverse_and_log_det(y)
    assert torch.allclose(layer.forward_and_log_det(x)[0], y, atol=1e-8)


def test_linearization_matches_autograd():
    torch.manual_seed(4)
    net = LipschitzMLP(3, (16, 8), context_dim=2).double()
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.5 * torch.randn_like(p))
    x, context = torch.randn(5, 3, dtype=torch.float64), torch.randn(2, 1, 2, dtype=torch.float64)
    gx, jacobian = net.linearize(x, context)
    assert torch.allclose(gx, net(x, context))
    jac = torch.func.vmap(torch.func.jacrev(net))(
        x.expand(2, 5, 3).reshape(10, 3), context.expand(2, 5, 2).reshape(10, 2)
    )
    w, v = torch.randn(2, 5, 3, dtype=torch.float64), torch.randn(2, 5, 3, dtype=torch.float64)
    assert torch.allclose(jacobian.vjp(w), torch.einsum("bi,bij->bj", w.reshape(10, 3), jac).view(2, 5, 3))
    assert torch.allclose(jacobian.jvp(v), torch.einsum("bij,bj->bi", jac, v.reshape(10, 3)).view(2, 5, 3))


@pytest.fixture
def conv_block():
    from pyroflows.transforms import ConvResidual

    torch.manual_seed(6)
    layer = ConvResidual((2, 4, 4), hidden_channels=8, coeff=0.9).double()
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return layer


@pytest.mark.parametrize("kind", ["dense", "conv"])
@pytest.mark.parametrize("method", ["exact", "series", "roulette"])
@pytest.mark.parametrize("neumann_gradient", [True, False])
def test_linearized_estimators_equal_the_autograd_ones(block, conv_block, kind, method, neumann_gradient):
    """A network's ``linearize`` (dense or convolutional) gives the numbers autograd gives."""
    layer, shape = (block, (3, 4)) if kind == "dense" else (conv_block, (3, 2, 4, 4))
    event_dim = len(layer.event_shape)
    y = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    params = [y, *layer.net.parameters()]
    estimator = LogDetEstimator(method, num_terms=4, neumann_gradient=neumann_gradient)
    results = []
    for g in (layer.net, lambda v, c: layer.net(v, c)):
        torch.manual_seed(5)
        gx, log_det = estimator(g, y, event_dim=event_dim)
        grads = torch.autograd.grad((log_det.sum(), gx.square().sum()), params, allow_unused=True)
        results.append([gx, log_det, *[torch.zeros(()) if d is None else d for d in grads]])
    for a, b in zip(*results, strict=True):
        assert torch.allclose(a, b, atol=1e-10)
