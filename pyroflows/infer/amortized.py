"""Amortized flow guides for local latent variables in a (subsampled) plate."""

from __future__ import annotations

from collections.abc import Callable

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule
from torch import nn

from pyroflows import flows

__all__ = ["AmortizedFlow", "conditional_spline_flow"]


def conditional_spline_flow(latent_dim, context_dim, num_transforms, hidden_dims, count_bins, bound):
    """Conditional spline autoregressive layers in IAF mode (cheap sampling
    and the density of their own samples), identity at initialisation;
    ``None`` for ``num_transforms=0``."""
    if not num_transforms:
        return None
    return flows.nsf(
        latent_dim,
        context_dim=context_dim,
        num_transforms=num_transforms,
        hidden_dims=hidden_dims,
        count_bins=count_bins,
        bound=bound,
        variant="autoregressive",
        mode="iaf",
    )


class AmortizedFlow(PyroModule):
    """Guide ``q(z_i | x_i)`` for a local latent site in a plate.

    An ``encoder`` maps each datum to a context vector; a linear head turns
    it into a diagonal Gaussian, and a conditional neural spline flow (the
    same context, identity at initialisation) reshapes it. With
    ``num_transforms=0`` it is the usual Gaussian amortized guide. The guide
    opens the plate itself (so its subsample indices drive the model's) and
    reads the data through ``data(*args, **kwargs)``.

    Combine it with `AutoFlow` over the globals (hide the local site
    from that one) in a guide that calls both (not ``AutoGuideList``, which
    opens the plate itself):

    ```python
    global_guide = AutoFlow(poutine.block(model, hide=["z"]), warm_start=None)
    def guide(x):
        global_guide(x)
        local_guide(x)
    ```

    Args:
        site: name of the local latent site; its value has shape (latent_dim,).
        plate: name, size and optional ``subsample_size`` of the model's plate.
        data: callable ``(*args, **kwargs) -> tensor`` of all data, first dim
            the plate size.
        encoder: ``nn.Module`` mapping a batch of data to (batch, context_dim).
        context_dim: size of the encoder's output.
        num_transforms: spline autoregressive layers (0: Gaussian guide).
        hidden_dims: hidden sizes of each layer's MADE.
        count_bins: spline bins.
        bound: the spline box is [-bound, bound].

    Examples:
        >>> enc = nn.Sequential(nn.Linear(3, 8), nn.ReLU())
        >>> guide = AmortizedFlow("z", 2, ("data", 100, 10), lambda x: x, enc, context_dim=8)
        >>> guide(torch.randn(100, 3))["z"].shape
        torch.Size([10, 2])
    """

    def __init__(
        self,
        site: str,
        latent_dim: int,
        plate: tuple,
        data: Callable[..., torch.Tensor],
        encoder: nn.Module,
        context_dim: int,
        num_transforms: int = 2,
        hidden_dims: tuple[int, ...] = (64, 64),
        count_bins: int = 8,
        bound: float = 5.0,
    ) -> None:
        super().__init__()
        if not isinstance(latent_dim, int) or latent_dim < 1:
            raise ValueError(f"latent_dim must be a positive int, got {latent_dim!r}")
        if not (isinstance(plate, tuple) and 2 <= len(plate) <= 3):
            raise ValueError(f"plate must be (name, size) or (name, size, subsample_size), got {plate!r}")
        self.site, self.latent_dim, self.plate_args, self.data = site, latent_dim, plate, data
        self.encoder = encoder
        self.head = nn.Linear(context_dim, 2 * latent_dim)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)
        self.flow = conditional_spline_flow(latent_dim, context_dim, num_transforms, hidden_dims, count_bins, bound)

    def posterior(self, x: torch.Tensor) -> dist.Distribution:
        """``q(z | x)`` for a batch of data ``x``: batch shape (batch,), event (latent_dim,)."""
        context = self.encoder(x)
        loc, log_scale = self.head(context).chunk(2, -1)
        base = dist.Normal(loc, log_scale.exp()).to_event(1)
        if self.flow is None:
            return base
        return dist.ConditionalTransformedDistribution(base, [self.flow]).condition(context)

    def forward(self, *args, **kwargs) -> dict[str, torch.Tensor]:
        name, size, *subsample = self.plate_args
        data = self.data(*args, **kwargs)
        if data.shape[0] != size:
            raise ValueError(f"data must have {size} rows (the plate size), got shape {tuple(data.shape)}")
        with pyro.plate(name, size, subsample_size=subsample[0] if subsample else None) as idx:
            z = pyro.sample(self.site, self.posterior(data[idx]))
        return {self.site: z}
