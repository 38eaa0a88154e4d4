"""The entry-by-entry Cholesky and solves agree with ``torch.linalg``."""

from __future__ import annotations

import pytest
import torch

from pyroflows.infer import small_linalg


@pytest.mark.parametrize("d", [1, 2, 3, 4, 6])
def test_cholesky_and_solves_match_torch_linalg_in_value_and_gradient(d):
    torch.manual_seed(d)
    x = torch.randn(5, 3, d, d, dtype=torch.float64, requires_grad=True)
    matrix = x @ x.mT + 0.1 * torch.eye(d, dtype=torch.float64)  # symmetric: only then do the gradients agree
    rhs = torch.randn(5, 3, d, dtype=torch.float64, requires_grad=True)

    def ours():
        factor = small_linalg.cholesky(matrix)
        return factor, small_linalg.cholesky_solve(rhs, factor), small_linalg.solve_lower_transpose(factor, rhs)

    def reference():
        factor = torch.linalg.cholesky(matrix)
        solve = torch.cholesky_solve(rhs.unsqueeze(-1), factor).squeeze(-1)
        upper = torch.linalg.solve_triangular(factor.mT, rhs.unsqueeze(-1), upper=True).squeeze(-1)
        return factor, solve, upper

    weights = [torch.randn_like(t) for t in reference()]
    for a, b in zip(ours(), reference(), strict=True):
        torch.testing.assert_close(a, b)
    grads = [
        torch.autograd.grad(sum((t * w).sum() for t, w in zip(f(), weights, strict=True)), (x, rhs), retain_graph=True)
        for f in (ours, reference)
    ]
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("d", [2, 6])
def test_cholesky_of_a_matrix_that_is_not_positive_definite_is_flagged_not_raised(d):
    matrix = torch.eye(d).expand(4, d, d).clone()
    matrix[1, -1, -1] = -1.0
    factor = small_linalg.cholesky(matrix)
    good = torch.isfinite(factor).flatten(-2).all(-1) & (factor.diagonal(dim1=-2, dim2=-1) > 0).all(-1)
    assert good.tolist() == [True, False, True, True]
