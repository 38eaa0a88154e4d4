"""The same flow architectures in pyroflows and its peers, behind one interface.

Each builder returns a :class:`Model`: an ``nn.Module`` holding the
parameters, ``log_prob(x)`` and ``sample(n)``. Peers are imported lazily and
installed with ``pip install -e .[bench]``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import pyro.distributions as dist
import torch
from torch import nn

import pyroflows

# nflows and normflows warn when a conditioner has no ``hidden_features`` (their
# residual nets' attribute, by which they scale the bin logits); ours are MLPs.
warnings.filterwarnings("ignore", "Inputs to the softmax are not scaled down")

LIBRARIES = ("pyroflows", "pyro", "zuko", "nflows", "normflows")


@dataclass
class Model:
    module: nn.Module
    log_prob: Callable[[torch.Tensor], torch.Tensor]
    sample: Callable[[int], torch.Tensor]
    optimizer: torch.optim.Optimizer | None = None  # kept across training chunks


def _pyro_style(flow: nn.Module, dim: int) -> Model:
    base = dist.Normal(torch.zeros(dim), torch.ones(dim)).to_event(1)
    cls = (
        pyroflows.FlowDistribution
        if isinstance(flow, pyroflows.flows.ComposeTransformModule)
        and any(isinstance(t, pyroflows.transforms.FlowTransform) for t in flow.parts)
        else dist.TransformedDistribution
    )
    d = cls(base, flow, validate_args=False)
    return Model(flow, d.log_prob, lambda n: d.sample((n,)))


def build(
    library: str, kind: str, dim: int, num_transforms: int = 5, hidden: int = 64, bins: int = 8, bound: float = 5.0
) -> Model:
    """``kind`` is ``"nsf"`` (spline coupling), ``"realnvp"`` or ``"maf"``;
    ``library`` one of :data:`LIBRARIES`, or ``"normflows-own"`` for normflows'
    own NSF layer (``CoupledRationalQuadraticSpline``: a residual conditioner and
    an unconditional spline on the copied half, which it cannot turn off), or
    ``"pyroflows-copied"`` for pyroflows with that spline (``transform_copied=True``).
    The peers' spline couplings map data to base (Pyro's built-in maps base to
    data, its only way); so do pyroflows' (``nsf``'s default ``spline_direction``).
    ``"library@width"`` overrides ``hidden``."""
    if "@" in library:
        library, width = library.split("@")
        hidden = int(width)
    hidden_dims = (hidden, hidden)
    if library in ("pyroflows", "pyroflows-copied"):
        if kind == "nsf":
            flow = pyroflows.nsf(
                dim,
                num_transforms=num_transforms,
                hidden_dims=hidden_dims,
                count_bins=bins,
                bound=bound,
                transform_copied=library == "pyroflows-copied",
            )
        elif kind == "realnvp":
            flow = pyroflows.realnvp(dim, num_transforms=num_transforms, hidden_dims=hidden_dims)
        else:
            flow = pyroflows.maf(dim, num_transforms=num_transforms, hidden_dims=hidden_dims)
        return _pyro_style(flow, dim)
    if library == "pyro":
        return _pyro_builtin(kind, dim, num_transforms, hidden_dims, bins, bound)
    if library == "zuko":
        return _zuko(kind, dim, num_transforms, hidden_dims, bins, bound)
    if library == "nflows":
        return _nflows(kind, dim, num_transforms, hidden, bins, bound)
    if library in ("normflows", "normflows-own"):
        return _normflows(kind, dim, num_transforms, hidden, bins, bound, own=library == "normflows-own")
    raise ValueError(f"unknown library {library!r}; expected one of {LIBRARIES}, 'normflows-own' or 'pyroflows-copied'")


def _pyro_builtin(kind, dim, num_transforms, hidden_dims, bins, bound):
    import pyro.distributions.transforms as T
    from pyro.distributions.torch_transform import ComposeTransformModule

    if kind != "nsf":
        raise ValueError("the pyro peer is only benchmarked on nsf")
    layers = []
    for i in range(num_transforms):
        if i:
            layers.append(T.Permute(torch.arange(dim - 1, -1, -1)))
        layers.append(
            T.spline_coupling(dim, split_dim=dim // 2, hidden_dims=list(hidden_dims), count_bins=bins, bound=bound)
        )
    return _pyro_style(ComposeTransformModule(layers), dim)


def _zuko(kind, dim, num_transforms, hidden_dims, bins, bound):
    from functools import partial

    import zuko

    if kind == "nsf":
        flow = zuko.flows.RealNVP(
            dim,
            transforms=num_transforms,
            hidden_features=hidden_dims,
            univariate=partial(zuko.transforms.MonotonicRQSTransform, bound=bound),
            shapes=[(bins,), (bins,), (bins - 1,)],
        )
    elif kind == "realnvp":
        flow = zuko.flows.RealNVP(dim, transforms=num_transforms, hidden_features=hidden_dims)
    else:
        flow = zuko.flows.MAF(dim, transforms=num_transforms, hidden_features=hidden_dims)
    return Model(flow, lambda x: flow().log_prob(x), lambda n: flow().sample((n,)))


def _nflows(kind, dim, num_transforms, hidden, bins, bound):
    from nflows import distributions, flows, transforms
    from nflows.nn.nets import MLP

    class Net(MLP):
        def forward(self, inputs, context=None):
            return super().forward(inputs)

    def net(in_features, out_features):
        return Net((in_features,), (out_features,), hidden_sizes=[hidden, hidden])

    layers = []
    for i in range(num_transforms):
        mask = (torch.arange(dim) % 2 == i % 2).int() * 2 - 1  # nflows: >0 transformed
        if kind == "nsf":
            layers.append(
                transforms.PiecewiseRationalQuadraticCouplingTransform(
                    mask, net, num_bins=bins, tails="linear", tail_bound=bound
                )
            )
        elif kind == "realnvp":
            layers.append(transforms.AffineCouplingTransform(mask, net))
        else:
            # initial masked layer + one block = two hidden layers, as ours
            layers.append(
                transforms.MaskedAffineAutoregressiveTransform(dim, hidden, num_blocks=1, use_residual_blocks=False)
            )
            layers.append(transforms.ReversePermutation(dim))
    flow = flows.Flow(transforms.CompositeTransform(layers), distributions.StandardNormal([dim]))
    return Model(flow, flow.log_prob, flow.sample)


def _normflows(kind, dim, num_transforms, hidden, bins, bound, own=False):
    import normflows as nf

    layers = []
    for i in range(num_transforms):
        if kind == "nsf" and own:  # normflows' NSF layer, as it ships
            layers.append(
                nf.flows.CoupledRationalQuadraticSpline(
                    dim, 1, hidden, num_bins=bins, tail_bound=bound, reverse_mask=bool(i % 2)
                )
            )
        elif kind == "nsf":
            layers.append(_normflows_spline_coupling(dim, hidden, bins, bound, reverse_mask=bool(i % 2)))
        elif kind == "realnvp":
            layers.append(
                nf.flows.MaskedAffineFlow(
                    (torch.arange(dim) % 2 == i % 2).float(),
                    nf.nets.MLP([dim, hidden, hidden, dim], init_zeros=True),
                    nf.nets.MLP([dim, hidden, hidden, dim], init_zeros=True),
                )
            )
        else:
            layers.append(nf.flows.MaskedAffineAutoregressive(dim, hidden, num_blocks=2))
            layers.append(nf.flows.Permute(dim, mode="swap"))
    flow = nf.NormalizingFlow(nf.distributions.DiagGaussian(dim, trainable=False), layers)
    return Model(flow, flow.log_prob, lambda n: flow.sample(n)[0])


def _normflows_spline_coupling(dim, hidden, bins, bound, reverse_mask):
    """normflows' spline coupling with the others' architecture: a 64x2 MLP
    conditioner (identity at initialisation) and no unconditional spline on the
    copied half (its ``CoupledRationalQuadraticSpline`` hard-codes both)."""
    import normflows as nf
    from normflows.flows.neural_spline.coupling import PiecewiseRationalQuadraticCoupling
    from normflows.utils.splines import DEFAULT_MIN_DERIVATIVE

    class Net(nf.nets.MLP):
        def forward(self, inputs, context=None):
            return super().forward(inputs)

    def net(in_features, out_features):
        mlp = Net([in_features, hidden, hidden, out_features], init_zeros=True)
        nn.init.constant_(mlp.net[-1].bias, math.log(math.expm1(1 - DEFAULT_MIN_DERIVATIVE)))
        return mlp

    layer = nf.flows.CoupledRationalQuadraticSpline(dim, 1, hidden, num_bins=bins, tail_bound=bound)
    mask = (torch.arange(dim) % 2 == int(reverse_mask)).int() * 2 - 1  # > 0: transformed
    layer.prqct = PiecewiseRationalQuadraticCoupling(
        mask, net, num_bins=bins, tails="linear", tail_bound=bound, apply_unconditional_transform=False
    )
    return layer
