"""``FlowDistribution``: a ``TransformedDistribution`` with a one-pass ``log_prob``.

``dist.TransformedDistribution`` already costs one conditioner pass per
pyroflows layer (the cache serves the rest), but it walks each layer twice and
pays for the cache's bookkeeping. ``FlowDistribution`` walks the layers once,
calling each layer's fused inverse-and-log-det, and is otherwise the same
Pyro distribution (``rsample``, ``sample``, ``expand``, use in models and
guides).

Examples:
    >>> import pyro.distributions as dist
    >>> import pyroflows
    >>> base = dist.Normal(torch.zeros(2), torch.ones(2)).to_event(1)
    >>> d = FlowDistribution(base, pyroflows.nsf(2, num_transforms=2))
    >>> d.log_prob(torch.zeros(3, 2)).shape
    torch.Size([3])
"""

from __future__ import annotations

import pyro.distributions as dist
import torch
from pyro.distributions.util import sum_rightmost
from torch.distributions import ComposeTransform, Transform

from pyroflows.transforms.base import CachedBijection


def _flatten(transforms: list[Transform]) -> list[Transform]:
    flat: list[Transform] = []
    for t in transforms:
        if isinstance(t, ComposeTransform):
            flat.extend(_flatten(t.parts))
        else:
            flat.append(t)
    return flat


class FlowDistribution(dist.TransformedDistribution):
    """Pyro ``TransformedDistribution`` whose ``log_prob`` is a single pass over the layers."""

    def _validate_sample(self, value: torch.Tensor) -> None:
        if value.numel():
            return super()._validate_sample(value)
        event = tuple(value.shape[value.dim() - len(self.event_shape) :])
        if event != tuple(self.event_shape):  # torch's support check cannot reshape an empty batch
            raise ValueError(f"value must have event shape {tuple(self.event_shape)}, got shape {tuple(value.shape)}")

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if self._validate_args:
            self._validate_sample(value)
        if not value.numel():  # torch's sum over event dims cannot reshape an empty batch
            return value.new_zeros(value.shape[: value.dim() - len(self.event_shape)])
        event_dim = len(self.event_shape)
        log_prob = 0.0
        y = value
        for transform in reversed(_flatten(self.transforms)):
            if isinstance(transform, CachedBijection):
                x, log_det = transform.inverse_and_log_det(y)
            else:
                x = transform.inv(y)
                log_det = transform.log_abs_det_jacobian(x, y)
            event_dim += transform.domain.event_dim - transform.codomain.event_dim
            log_prob = log_prob - sum_rightmost(log_det, event_dim - transform.domain.event_dim)
            y = x
        return log_prob + sum_rightmost(self.base_dist.log_prob(y), event_dim - len(self.base_dist.event_shape))
