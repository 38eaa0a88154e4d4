"""ConvResNet: the small-image path computes the same network as convolutions."""

import pytest
import torch
import torch.nn.functional as F

from pyroflows.nn import ConvResNet


def reference(net: ConvResNet, x: torch.Tensor, context: torch.Tensor | None) -> torch.Tensor:
    """The network written with F.conv2d only."""
    if net.map_context:
        x = torch.cat([x, context], dim=1)
    h = F.conv2d(x, net.inp.weight, net.inp.bias, padding=1)
    if net.context is not None:
        h = h + net.context(context)[..., None, None]
    for wide, narrow in net.blocks:
        h = h + F.conv2d(F.relu(F.conv2d(F.relu(h), wide.weight, wide.bias, padding=1)), narrow.weight, narrow.bias)
    h = F.relu(F.conv2d(F.relu(h), net.mid.weight, net.mid.bias))
    return F.conv2d(h, net.out.weight, net.out.bias, padding=1)


@pytest.mark.parametrize("size", [(1, 1), (2, 2), (3, 3), (2, 4), (4, 4), (5, 5), (8, 8)])
@pytest.mark.parametrize("num_blocks", [0, 2])
@pytest.mark.parametrize("context", [None, "vector", "map"])
def test_matches_convolutions(size, num_blocks, context):
    torch.manual_seed(0)
    h, w = size
    context_dim = {None: None, "vector": 3, "map": (2, h, w)}[context]
    net = ConvResNet(2, 5, hidden_channels=6, num_blocks=num_blocks, context_dim=context_dim, zero_init=False)
    net = net.double()
    x = torch.randn(4, 2, h, w, dtype=torch.float64, requires_grad=True)
    ctx = {None: None, "vector": torch.randn(4, 3), "map": torch.randn(4, 2, h, w)}[context]
    ctx = None if ctx is None else ctx.double()
    out, ref = net(x, ctx), reference(net, x, ctx)
    assert out.shape == ref.shape == (4, 5, h, w)
    assert torch.allclose(out, ref, atol=1e-12)
    weights = torch.randn_like(ref)
    grads = torch.autograd.grad((out * weights).sum(), [x, *net.parameters()])
    ref_grads = torch.autograd.grad((ref * weights).sum(), [x, *net.parameters()])
    for g, r in zip(grads, ref_grads, strict=True):
        assert torch.allclose(g, r, atol=1e-11)
