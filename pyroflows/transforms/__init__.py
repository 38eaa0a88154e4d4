"""Flow layers: every public class is a Pyro ``TransformModule`` (or a
``ConditionalTransformModule`` for ``Conditional*``)."""

from pyroflows.transforms.autoregressive import (
    AffineAutoregressive,
    Autoregressive,
    ConditionalAffineAutoregressive,
    ConditionalSplineAutoregressive,
    SplineAutoregressive,
)
from pyroflows.transforms.base import ConditionalFlowTransform, FlowTransform
from pyroflows.transforms.continuous import ConditionalContinuousFlow, ContinuousFlow
from pyroflows.transforms.coupling import (
    AdditiveCoupling,
    AffineCoupling,
    ConditionalAdditiveCoupling,
    ConditionalAffineCoupling,
    ConditionalSplineCoupling,
    Coupling,
    SplineCoupling,
)
from pyroflows.transforms.image import ConditionalImageCoupling, GlowStep, ImageCoupling, Squeeze, Unsqueeze
from pyroflows.transforms.inverse import Inverse
from pyroflows.transforms.linear import InvertibleConv1x1, LULinear, Permute, Reverse, TriangularAffine
from pyroflows.transforms.logdet import LogDetEstimator
from pyroflows.transforms.masks import alternating_mask, checkerboard_mask, half_mask
from pyroflows.transforms.normalization import ActNorm, BatchNorm
from pyroflows.transforms.preprocessing import Logit
from pyroflows.transforms.residual import ConditionalResidual, ConvResidual, Residual, ResidualNotConverged
from pyroflows.transforms.spline import Spline
from pyroflows.transforms.univariate import RationalQuadraticSpline, ScaleShift, Shift, UnivariateMap

__all__ = [
    "ConvResidual",
    "Logit",
    "InvertibleConv1x1",
    "Unsqueeze",
    "Squeeze",
    "ImageCoupling",
    "GlowStep",
    "ConditionalImageCoupling",
    "ActNorm",
    "AdditiveCoupling",
    "AffineAutoregressive",
    "AffineCoupling",
    "Autoregressive",
    "BatchNorm",
    "ConditionalAdditiveCoupling",
    "ConditionalAffineAutoregressive",
    "ConditionalAffineCoupling",
    "ConditionalFlowTransform",
    "ConditionalSplineAutoregressive",
    "ConditionalContinuousFlow",
    "ConditionalResidual",
    "ConditionalSplineCoupling",
    "ContinuousFlow",
    "Coupling",
    "FlowTransform",
    "Inverse",
    "LULinear",
    "LogDetEstimator",
    "Permute",
    "RationalQuadraticSpline",
    "Residual",
    "ResidualNotConverged",
    "Reverse",
    "ScaleShift",
    "Shift",
    "Spline",
    "SplineAutoregressive",
    "SplineCoupling",
    "TriangularAffine",
    "UnivariateMap",
    "alternating_mask",
    "checkerboard_mask",
    "half_mask",
]
