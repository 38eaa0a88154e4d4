"""`IndexSelectMode`: integer-array indexing as ``index_select``, same values and gradients."""

import pytest
import torch

from pyroflows.infer.indexing import IndexSelectMode

KEYS = {
    "first dim": torch.tensor([0, 2, -1, 2]),
    "last dim": (Ellipsis, torch.tensor([1, -7, 6, 0, 0])),
    "last dim, 2-D index": (Ellipsis, torch.tensor([[1, 2], [0, 3]])),
    "first dim, 2-D index": torch.tensor([[0, 1], [2, -3]]),
    "int32 index": (Ellipsis, torch.tensor([4, 1], dtype=torch.int32)),
    "bool mask (left to torch)": torch.tensor([True, False, True]),
    "slice and index (left to torch)": (slice(None), torch.tensor([1])),
    "0-d index (left to torch)": torch.tensor(1),
    "int (left to torch)": 1,
}


@pytest.mark.parametrize("key", KEYS.values(), ids=KEYS.keys())
def test_indexing_gives_torchs_values_and_gradients_up_to_second_order(key):
    a = torch.randn(3, 7, dtype=torch.float64, requires_grad=True)
    expected = a[key]
    with IndexSelectMode():
        got = a[key]
    assert torch.equal(got, expected)
    results = []
    for out in (expected, got):
        (grad,) = torch.autograd.grad(out.pow(3).sum(), a, create_graph=True)
        (second,) = torch.autograd.grad((grad * grad).sum(), a)
        results.append((grad, second))
    assert torch.allclose(results[0][0], results[1][0]) and torch.allclose(results[0][1], results[1][1])


def test_a_hierarchical_gather_runs_as_index_select():
    a = torch.randn(8, 1000, requires_grad=True)
    group = torch.randint(0, 1000, (5000,))
    with IndexSelectMode():
        out = a[..., group]
    assert type(out.grad_fn).__name__ == "IndexSelectBackward0"
    assert torch.equal(out, a.detach()[..., group])


@pytest.mark.parametrize("bad", [3, -4])
def test_an_index_out_of_range_is_still_an_index_error(bad):
    a = torch.randn(3, 2)
    with IndexSelectMode(), pytest.raises(IndexError):
        a[torch.tensor([0, bad])]
