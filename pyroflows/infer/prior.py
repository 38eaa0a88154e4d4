"""Learnable flow priors for use inside a model's ``pyro.sample``."""

from __future__ import annotations

import pyro.distributions as dist
import torch
from pyro.distributions.torch_transform import ComposeTransformModule
from pyro.nn import PyroModule

from pyroflows import flows
from pyroflows.transforms import TriangularAffine

__all__ = ["FlowPrior"]


class FlowPrior(PyroModule):
    """A learnable density over R^dim: a standard normal pushed through a
    neural spline coupling flow and a lower-triangular affine map (identity
    at initialisation, so training starts from N(0, I)). Both directions cost one pass per layer, so the
    model can sample from it and score guide samples cheaply.

    Keep it as an attribute of a ``PyroModule`` model (or call it inside a
    model): its parameters then appear in the trace and SVI learns them with
    the guide.

    Examples:
        >>> import pyro
        >>> prior = FlowPrior(2)
        >>> def model():
        ...     return pyro.sample("z", prior())
        >>> model().shape
        torch.Size([2])
    """

    def __init__(
        self,
        dim: int,
        num_transforms: int = 4,
        hidden_dims: tuple[int, ...] = (64, 64),
        count_bins: int = 8,
        bound: float = 5.0,
    ) -> None:
        super().__init__()
        if not isinstance(dim, int) or dim < 1:
            raise ValueError(f"dim must be a positive int, got {dim!r}")
        self.dim = dim
        options = {"num_transforms": num_transforms, "hidden_dims": hidden_dims, "count_bins": count_bins}
        layers = list(flows.latent_flow("nsf", dim, bound=bound, **options))
        # then a learned affine map, so scale and location need not fit inside the spline box
        self.flow = ComposeTransformModule([*layers, TriangularAffine(dim)])
        self.register_buffer("_zero", torch.zeros(dim))

    def forward(self) -> dist.TransformedDistribution:
        base = dist.Normal(self._zero, torch.ones_like(self._zero)).to_event(1)
        return dist.TransformedDistribution(base, [self.flow])
