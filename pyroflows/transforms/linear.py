"""Linear layers: fixed permutations and an LU-parametrised invertible matrix."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from pyroflows.transforms.base import FlowTransform


class Permute(FlowTransform):
    """Reorder elements: $y = x_{\\pi}$, log-det 0. Both directions cheap.

    Examples:
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
    """Invertible linear map $y = W x$ with $W = P L (U + \\mathrm{diag}(\\sigma e^{s}))$.

    ``P`` is a fixed permutation, ``L`` unit lower triangular, ``U`` strictly
    upper triangular and $\\sigma$ fixed signs (Kingma & Dhariwal,
    arXiv:1807.03039, sec. 3.2), so $\\log|\\det J| = \\sum_i s_i$. Forward is a matrix product
    (``O(D^2)``), inverse two triangular solves (``O(D^2)``). Identity at
    initialisation when ``random_permutation=False``.

    Examples:
        >>> layer = LULinear(3)
        >>> layer(torch.ones(3)).tolist()
        [1.0, 1.0, 1.0]
    """

    def __init__(self, input_dim: int, random_permutation: bool = False) -> None:
        super().__init__((input_dim,))
        perm = torch.randperm(input_dim) if random_permutation else torch.arange(input_dim)
        self.register_buffer("permutation", perm)
        self.register_buffer("inverse_permutation", torch.argsort(perm))
        self.register_buffer("diag_sign", torch.ones(input_dim))
        self.lower = nn.Parameter(torch.zeros(input_dim, input_dim))
        self.upper = nn.Parameter(torch.zeros(input_dim, input_dim))
        self.log_diag = nn.Parameter(torch.zeros(input_dim))

    @torch.no_grad()
    def _start_at(self, matrix: torch.Tensor) -> None:
        """Set the parameters so that ``W`` equals ``matrix`` (invertible)."""
        perm, lower, upper = torch.linalg.lu(matrix)
        self.permutation.copy_(perm.argmax(1))
        self.inverse_permutation.copy_(torch.argsort(self.permutation))
        self.lower.copy_(lower.tril(-1))
        self.upper.copy_(upper.triu(1))
        self.diag_sign.copy_(upper.diagonal().sign())
        self.log_diag.copy_(upper.diagonal().abs().log())

    def _factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        eye = torch.eye(self.event_shape[0], dtype=self.lower.dtype, device=self.lower.device)
        lower = self.lower.tril(-1) + eye
        upper = self.upper.triu(1) + torch.diag(self.diag_sign * self.log_diag.exp())
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


class InvertibleConv1x1(LULinear):
    """Glow's invertible 1x1 convolution: one ``C x C`` matrix mixes the
    channels of every pixel of ``(*, C, H, W)``.

    $$
    x_{:, h, w} = V y_{:, h, w}, \\qquad V = P L (U + \\mathrm{diag}(\\sigma e^{s})), \\qquad
    \\log|\\det \\partial y / \\partial x| = -H W \\sum_i s_i
    $$

    The LU factors (as in `LULinear`) parametrise ``V``, the matrix of
    the data -> base direction (the inverse here), as Glow does: density
    evaluation, hence training, is one matrix product per pixel; sampling
    (the forward) applies $V^{-1}$, from two ``C x C`` triangular
    solves. The log-det costs ``O(C)``. Starts at a random rotation (Kingma &
    Dhariwal, arXiv:1807.03039, sec. 3.2), drawn from ``seed`` when given.

    Examples:
        >>> layer = InvertibleConv1x1((4, 8, 8), seed=0)
        >>> y, log_det = layer.forward_and_log_det(torch.randn(2, 4, 8, 8))
        >>> log_det.abs().max().item() < 1e-5  # a rotation keeps volume
        True
    """

    def __init__(self, input_shape: tuple[int, int, int], seed: int | None = None) -> None:
        if len(input_shape) != 3:
            raise ValueError(f"InvertibleConv1x1 takes an image shape (C, H, W), got {input_shape!r}")
        super().__init__(input_shape[0])
        self._set_shapes(input_shape)  # the event is the whole image
        self.pixels = input_shape[1] * input_shape[2]
        gen = None if seed is None else torch.Generator().manual_seed(seed)
        self._start_at(torch.linalg.qr(torch.randn(input_shape[0], input_shape[0], generator=gen))[0])

    def weight(self) -> torch.Tensor:
        """``V``, the data -> base matrix."""
        lower, upper = self._factors()
        return (lower @ upper).index_select(0, self.permutation)

    def inverse_weight(self) -> torch.Tensor:
        """``V^{-1}``, the base -> data matrix, from two triangular solves."""
        lower, upper = self._factors()
        eye = torch.eye(len(self.permutation), dtype=lower.dtype, device=lower.device)
        z = torch.linalg.solve_triangular(lower, eye.index_select(1, self.permutation), upper=False, unitriangular=True)
        return torch.linalg.solve_triangular(upper, z, upper=True)

    def _mix(self, matrix, value, sign):
        flat = value.reshape(*value.shape[:-3], value.shape[-3], self.pixels)
        log_det = (sign * self.pixels * self.log_diag.sum()).expand(value.shape[:-3])
        return torch.matmul(matrix, flat).view(value.shape), log_det

    def _forward_and_log_det(self, x, context):
        return self._mix(self.inverse_weight(), x, -1)

    def _inverse_and_log_det(self, y, context):
        return self._mix(self.weight(), y, -1)


class TriangularAffine(FlowTransform):
    """Affine map $y = b + L x$ with ``L`` lower triangular,
    $L_{ii} = e^{s_i}$, so $\\log|\\det J| = \\sum_i s_i$.

    Forward is a matrix product, inverse a triangular solve (both
    ``O(D^2)``). Identity at initialisation. Flow guides use it for a learned
    full-rank correlation on top of a Laplace warm start.

    Examples:
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
