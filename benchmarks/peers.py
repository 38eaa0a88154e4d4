"""The same flow architectures in pyroflows and its peers, behind one interface.

Each builder returns a :class:`Model`: an ``nn.Module`` holding the
parameters, ``log_prob(x)`` and ``sample(n)``. Peers are imported lazily and
installed with ``pip install -e .[bench]``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pyro.distributions as dist
import torch
from torch import nn

import pyroflows

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
    """``kind`` is ``"nsf"`` (spline coupling), ``"realnvp"`` or ``"maf"``.
    ``"library@width"`` overrides ``hidden`` (normflows' smallest conditioner has an
    extra residual layer: ``"normflows@48"`` matches the others' parameter count)."""
    if "@" in library:
        library, width = library.split("@")
        hidden = int(width)
    hidden_dims = (hidden, hidden)
    if library == "pyroflows":
        if kind == "nsf":
            flow = pyroflows.nsf(
                dim, num_transforms=num_transforms, hidden_dims=hidden_dims, count_bins=bins, bound=bound
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
    if library == "normflows":
        return _normflows(kind, dim, num_transforms, hidden, bins, bound)
    raise ValueError(f"unknown library {library!r}; expected one of {LIBRARIES}")


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


def _normflows(kind, dim, num_transforms, hidden, bins, bound):
    import normflows as nf

    layers = []
    for i in range(num_transforms):
        if kind == "nsf":
            layers.append(
                nf.flows.CoupledRationalQuadraticSpline(
                    dim, 1, hidden, num_bins=bins, tail_bound=bound, reverse_mask=bool(i % 2)
                )
            )
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
