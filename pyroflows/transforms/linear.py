"""Linear layers: fixed permutations and an LU-parametrised invertible matrix."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from pyroflows.transforms.base import FlowTransform


class Permute(FlowTransform):
    """Reorder elements: :math:`y = x_{\\pi}`, log-det 0. Both directions cheap.

    Example:
        >>> Permute([2, 0, 1])(torch.tensor([10.0, 20.0, 30.0]))
        tensor([30., 10., 20.])
    """

    def __init__(self, permutation: Sequence[int]) -> None:
        perm = torch.as_tensor(permutation, dtype=torch.long)
        if perm.dim() != 1 or sorted(perm.tolist()) != list(range(len(perm))):
            raise ValueError(f"permutation must be a permutation of range(n), got {perm.tolist()}")
        super().__init__((len(perm),))
        self.register_buffer("permutation", perm)
        self.register_buffer("inverse_permutation", torch.argsort(perm))

    def _forward_and_log_det(self, x, context):
        return x.index_select(-1, self.permutation), x.new_zeros(x.shape[:-1])

    def _inverse_and_log_det(self, y, context):
        return y.index_select(-1, self.inverse_permutation), y.new_zeros(y.shape[:-1])


class Reverse(Permute):
    """Reverse the order of elements (MAF/IAF stacks put one between layers)."""

    def __init__(self, input_dim: int) -> None:
        super().__init__(list(range(input_dim - 1, -1, -1)))


class LULinear(FlowTransform):
    """Invertible linear map :math:`y = W x` with :math:`W = P L (U + \\mathrm{diag}(e^{s}))`.

    ``P`` is a fixed permutation, ``L`` unit lower triangular, ``U`` strictly
    upper triangular (Kingma & Dhariwal, arXiv:1807.03039, sec. 3.2), so
    :math:`\\log|\\det J| = \\sum_i s_i`. Forward is a matrix product
    (``O(D^2)``), inverse two triangular solves (``O(D^2)``). Identity at
    initialisation when ``random_permutation=False``.

    Example:
        >>> layer = LULinear(3)
        >>> layer(torch.ones(3)).tolist()
        [1.0, 1.0, 1.0]
    """

    def __init__(self, input_dim: int, random_permutation: bool = False) -> None:
        super().__init__((input_dim,))
        perm = torch.randperm(input_dim) if random_permutation else torch.arange(input_dim)
        self.register_buffer("permutation", perm)
        self.register_buffer("inverse_permutation", torch.argsort(perm))
        self.lower = nn.Parameter(torch.zeros(input_dim, input_dim))
        self.upper = nn.Parameter(torch.zeros(input_dim, input_dim))
        self.log_diag = nn.Parameter(torch.zeros(input_dim))

    def _factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        eye = torch.eye(self.event_shape[0], dtype=self.lower.dtype, device=self.lower.device)
        lower = self.lower.tril(-1) + eye
        upper = self.upper.triu(1) + torch.diag(self.log_diag.exp())
        return lower, upper

    def weight(self) -> torch.Tensor:
        """The matrix ``W``."""
        lower, upper = self._factors()
        return (lower @ upper)[self.permutation]

    def _log_det(self, value):
        return self.log_diag.sum().expand(value.shape[:-1])

    def _forward_and_log_det(self, x, context):
        lower, upper = self._factors()
        y = ((x @ upper.T) @ lower.T).index_select(-1, self.permutation)
        return y, self._log_det(x)

    def _inverse_and_log_det(self, y, context):
        lower, upper = self._factors()
        z = y.index_select(-1, self.inverse_permutation).reshape(-1, y.shape[-1]).T
        z = torch.linalg.solve_triangular(lower, z, upper=False, unitriangular=True)
        x = torch.linalg.solve_triangular(upper, z, upper=True).T.reshape(y.shape)
        return x, self._log_det(y)


class TriangularAffine(FlowTransform):
    """Affine map :math:`y = b + L x` with ``L`` lower triangular,
    :math:`L_{ii} = e^{s_i}`, so :math:`\\log|\\det J| = \\sum_i s_i`.

    Forward is a matrix product, inverse a triangular solve (both
    ``O(D^2)``). Identity at initialisation. Flow guides use it for a learned
    full-rank correlation on top of a Laplace warm start.

    Example:
        >>> layer = TriangularAffine(2)
        >>> layer(torch.tensor([1.0, 2.0])).tolist()
        [1.0, 2.0]
    """

    def __init__(self, input_dim: int) -> None:
        super().__init__((input_dim,))
        self.shift = nn.Parameter(torch.zeros(input_dim))
        self.lower = nn.Parameter(torch.zeros(input_dim, input_dim))
        self.log_diag = nn.Parameter(torch.zeros(input_dim))

    def matrix(self) -> torch.Tensor:
        """The matrix ``L``."""
        return self.lower.tril(-1) + torch.diag(self.log_diag.exp())

    def _forward_and_log_det(self, x, context):
        y = self.shift + x @ self.matrix().T
        return y, self.log_diag.sum().expand(x.shape[:-1])

    def _inverse_and_log_det(self, y, context):
        flat = (y - self.shift).reshape(-1, y.shape[-1]).T
        x = torch.linalg.solve_triangular(self.matrix(), flat, upper=False).T.reshape(y.shape)
        return x, self.log_diag.sum().expand(y.shape[:-1])
