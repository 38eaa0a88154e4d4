"""A layer's inverse as a layer of its own."""

from __future__ import annotations

from pyroflows.transforms.base import FlowTransform


class Inverse(FlowTransform):
    """``Inverse(layer)`` maps as ``layer``'s inverse and back:

    $$
    g = f^{-1}, \\qquad \\log|\\det J_g(x)| = -\\log|\\det J_f(f^{-1}(x))|
    $$

    It owns ``layer`` (its parameters train through it) and its context. Use it
    to put a layer's cheap direction, or the direction its function class is
    built in, on the other side: a spline coupling whose splines map data to base
    (as in the NSF paper, nflows, normflows and zuko) is
    ``Inverse(SplineCoupling(...))``, and the density then evaluates the splines
    forwards.

    Examples:
        >>> from pyroflows.transforms import AffineCoupling
        >>> layer = AffineCoupling(4)
        >>> Inverse(layer).event_shape == layer.output_shape
        True
    """

    def __init__(self, layer: FlowTransform) -> None:
        if not isinstance(layer, FlowTransform):
            raise TypeError(f"Inverse needs a FlowTransform, got {type(layer).__name__}")
        super().__init__(tuple(layer.output_shape), layer.context_dim, tuple(layer.event_shape))
        self.layer = layer
        self.domain, self.codomain = layer.codomain, layer.domain

    def _forward_and_log_det(self, x, context):
        y, log_det = self.layer._inverse_and_log_det(x, context)
        return y, -log_det

    def _inverse_and_log_det(self, y, context):
        x, log_det = self.layer._forward_and_log_det(y, context)
        return x, -log_det
