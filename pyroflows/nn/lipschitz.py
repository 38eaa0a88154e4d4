"""Lipschitz-constrained networks for residual flows (arXiv:1811.00995, 1906.02735)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from pyroflows.nn.context import concat_context
from pyroflows.nn.linearization import ConvLinearization, Linearization

__all__ = ["LipSwish", "LipschitzConvNet", "LipschitzMLP", "SpectralNormConv2d", "SpectralNormLinear"]


class LipSwish(nn.Module):
    """``x * sigmoid(beta x) / 1.1`` with learnable ``beta > 0``: 1-Lipschitz."""

    def __init__(self) -> None:
        super().__init__()
        self.raw_beta = nn.Parameter(torch.tensor(0.5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(F.softplus(self.raw_beta) * x) / 1.1

    def forward_and_slope(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The activation and its derivative, ``(sigma + beta x sigma (1 - sigma)) / 1.1``."""
        beta = F.softplus(self.raw_beta)
        sig = torch.sigmoid(beta * x)
        out = x * sig
        return out / 1.1, (sig + beta * out * (1 - sig)) / 1.1


class _SpectralNorm:
    """Power iteration for the spectral norm of a linear operator ``A`` given
    by ``_op(v)`` and its adjoint ``_op_adjoint(u)`` (buffers ``u``, ``v``).

    The norm is estimated whenever the weight changes: to ``tol`` (at most
    ``max_iterations``) the first time, then ``warm_iterations`` steps
    warm-started from the last vectors (the weight moves little per optimiser
    step). Between weight changes the layer is one fixed function, so forward
    and fixed-point inverse see the same map.
    """

    def _setup(self, coeff, tol, max_iterations, warm_iterations, u_shape, v_shape, zero_init) -> None:
        if not 0 < coeff:
            raise ValueError(f"coeff must be positive, got {coeff}")
        self.coeff, self.tol, self.max_iterations, self.warm_iterations = coeff, tol, max_iterations, warm_iterations
        self._warm = False
        if zero_init:
            nn.init.zeros_(self.weight)
            nn.init.zeros_(self.bias)
        gen = torch.Generator().manual_seed(0)
        self.register_buffer("u", _unit(torch.randn(u_shape, generator=gen)))
        self.register_buffer("v", _unit(torch.randn(v_shape, generator=gen)))
        # the sum of the weight that u and v were last computed for, and whether they came from a converged
        # start: after a load (state dict, pickle, Pyro's param store) the same weight reuses them as they are
        self.register_buffer("weight_sum", torch.zeros(()))
        self.register_buffer("warm", torch.zeros(()))
        self._eager = False  # write them after every iteration (for Pyro's param store), not only when saved
        self._seen: tuple | None = None

    def _key(self) -> tuple:
        return (self.weight._version, self.weight.data_ptr(), self.weight.dtype)

    @torch.no_grad()
    def restore_state(self) -> None:
        """Take up ``u``, ``v``, ``weight_sum`` and ``warm`` just loaded from
        elsewhere: the vectors are used as they are while the weight is the one
        they belong to (same sum)."""
        self._warm = bool(self.warm)
        same = torch.equal(self.weight_sum, self.weight.detach().sum().to(self.weight_sum))
        self._seen = self._key() if same else None

    def keep_state_current(self) -> None:
        """Write ``weight_sum`` and ``warm`` after every power iteration, for a
        store that saves the buffers without asking (Pyro's param store);
        otherwise they are written only when the module is saved."""
        self._eager = True

    @torch.no_grad()
    def _write_state(self) -> None:
        """``weight_sum`` of the weight the vectors belong to (NaN, which no weight matches, if it changed since)."""
        synced = self._seen == self._key()
        self.weight_sum.copy_(self.weight.detach().sum() if synced else torch.tensor(float("nan")))
        self.warm.fill_(float(self._warm))

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        if not self._eager:
            self._write_state()
        super()._save_to_state_dict(destination, prefix, keep_vars)

    def __getstate__(self):
        if not self._eager:
            self._write_state()
        return {**super().__getstate__(), "_seen": None}  # pointers do not survive pickling

    def __setstate__(self, state):
        super().__setstate__(state)
        self.restore_state()

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        if state_dict.pop(prefix + "synced", None) is not None:  # written by earlier releases
            state_dict.setdefault(prefix + "weight_sum", torch.full_like(self.weight_sum, torch.nan))
            state_dict.setdefault(prefix + "warm", torch.zeros_like(self.warm))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self.restore_state()

    @torch.no_grad()
    def _power_iteration(self) -> None:
        key = self._key()
        if key == self._seen:
            return
        u, v = self.u.to(self.weight.dtype), self.v.to(self.weight.dtype)
        if self._warm and self.warm_iterations:
            for _ in range(self.warm_iterations):  # unguarded: a zero norm gives NaN, caught below
                v = self._op_adjoint(u)
                v = v / v.norm()
                image = self._op(v)
                norm = image.norm()
                u = image / norm
            converged = norm.item() > 0  # one check: False for a zero weight (or NaN)
        else:
            sigma = torch.zeros((), dtype=u.dtype)
            for _ in range(self.max_iterations):
                v = _unit(self._op_adjoint(u))
                u = _unit(self._op(v))
                new = (u * self._op(v)).sum()
                if (new - sigma).abs() <= self.tol * new.abs().clamp(min=1e-12):
                    break
                sigma = new
            converged = bool(u.norm() > 0.5 and v.norm() > 0.5)
            self._warm = converged
        if converged:  # a zero weight leaves the vectors as they were
            self.u.copy_(u)
            self.v.copy_(v)
        self._seen = key
        if self._eager:
            self._write_state()

    def normalized_weight(self) -> torch.Tensor:
        self._power_iteration()
        sigma = (self.u.to(self.weight.dtype) * self._op(self.v.to(self.weight.dtype), self.weight)).sum()
        return self.weight / torch.clamp(sigma / self.coeff, min=1.0)


def _unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm().clamp(min=1e-12)


class SpectralNormLinear(_SpectralNorm, nn.Linear):
    """Linear layer whose weight is rescaled to spectral norm at most ``coeff``
    (power iteration, see `_SpectralNorm`)."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        coeff: float = 0.97,
        tol: float = 1e-6,
        max_iterations: int = 200,
        warm_iterations: int = 2,
        zero_init: bool = False,
    ) -> None:
        nn.Linear.__init__(self, in_features, out_features)
        self._setup(coeff, tol, max_iterations, warm_iterations, (out_features,), (in_features,), zero_init)

    def _op(self, v, weight=None):
        return (self.weight if weight is None else weight) @ v

    def _op_adjoint(self, u):
        return self.weight.T @ u

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.normalized_weight(), self.bias)


class SpectralNormConv2d(_SpectralNorm, nn.Conv2d):
    """Convolution (stride 1, "same" padding) rescaled to operator norm at most
    ``coeff`` on images of ``input_size = (H, W)``: the power iteration runs
    the convolution and its transpose (Residual Flows, arXiv:1906.02735)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        input_size: tuple[int, int],
        coeff: float = 0.97,
        tol: float = 1e-6,
        max_iterations: int = 200,
        warm_iterations: int = 2,
        zero_init: bool = False,
    ) -> None:
        nn.Conv2d.__init__(self, in_channels, out_channels, kernel_size, padding=kernel_size // 2)
        h, w = input_size
        self._setup(coeff, tol, max_iterations, warm_iterations, (out_channels, h, w), (in_channels, h, w), zero_init)

    def _op(self, v, weight=None):
        return F.conv2d(v[None], self.weight if weight is None else weight, padding=self.padding)[0]

    def _op_adjoint(self, u):
        return F.conv_transpose2d(u[None], self.weight, padding=self.padding)[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.normalized_weight(), self.bias, padding=self.padding)


class LipschitzMLP(nn.Module):
    """MLP with spectrally normalised layers and LipSwish activations:
    Lipschitz constant at most ``coeff`` in its input. The last layer starts
    at zero (the residual block starts at the identity). A context is
    concatenated to the input (the bound holds in the input for any context).
    """

    def __init__(
        self,
        features: int,
        hidden_dims: Sequence[int] = (64, 64),
        coeff: float = 0.97,
        context_dim: int | None = None,
    ) -> None:
        super().__init__()
        self.context_dim = context_dim
        sizes = [features + (context_dim or 0), *hidden_dims, features]
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
            last = i == len(sizes) - 2
            layers.append(SpectralNormLinear(a, b, coeff=coeff, zero_init=last))
            if not last:
                layers.append(LipSwish())
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        return self.net(concat_context(x, context))

    def linearize(self, x: torch.Tensor, context: torch.Tensor | None = None) -> tuple[torch.Tensor, Linearization]:
        """``g(x)`` and its Jacobian in ``x`` at ``x`` (one pass; the log-det
        estimators use it instead of autograd, see `Linearization`)."""
        features = x.shape[-1]
        weights, slopes, h = [], [], concat_context(x, context)
        for layer in self.net:
            if isinstance(layer, LipSwish):
                h, slope = layer.forward_and_slope(h)
                slopes.append(slope)
            else:
                weights.append(layer.normalized_weight())
                h = F.linear(h, weights[-1], layer.bias)
        weights[0] = weights[0][:, :features]  # the Jacobian in x, not in the context
        return h, Linearization(weights, slopes)


class LipschitzConvNet(nn.Module):
    """Convolutional network with spectrally normalised layers (3x3, 1x1, 3x3)
    and LipSwish activations: Lipschitz constant at most ``coeff`` on images
    ``(N, C, H, W)`` of the given ``input_shape``. The last layer starts at
    zero (the residual block starts at the identity)."""

    def __init__(self, input_shape: tuple[int, int, int], hidden_channels: int = 64, coeff: float = 0.97) -> None:
        super().__init__()
        c, h, w = input_shape
        self.net = nn.Sequential(
            SpectralNormConv2d(c, hidden_channels, 3, (h, w), coeff),
            LipSwish(),
            SpectralNormConv2d(hidden_channels, hidden_channels, 1, (h, w), coeff),
            LipSwish(),
            SpectralNormConv2d(hidden_channels, c, 3, (h, w), coeff, zero_init=True),
        )

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        batch = x.shape[:-3]
        return self.net(x.reshape(-1, *x.shape[-3:])).view(*batch, *x.shape[-3:])

    def linearize(self, x: torch.Tensor, context: torch.Tensor | None = None) -> tuple[torch.Tensor, ConvLinearization]:
        """``g(x)`` and its Jacobian at ``x`` (see `LipschitzMLP.linearize`)."""
        batch, shape = x.shape[:-3], x.shape[-3:]
        weights, slopes, h = [], [], x.reshape(-1, *shape)
        for layer in self.net:
            if isinstance(layer, LipSwish):
                h, slope = layer.forward_and_slope(h)
                slopes.append(slope.view(*batch, *slope.shape[-3:]))
            else:
                weights.append(layer.normalized_weight())
                h = F.conv2d(h, weights[-1], layer.bias, padding=layer.padding)
        return h.view(*batch, *shape), ConvLinearization(weights, slopes, shape)
