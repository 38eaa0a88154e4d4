"""Registry of every public layer, run through pyroflows.testing."""

from __future__ import annotations

import torch

from pyroflows import transforms as T
from pyroflows.testing import TransformCase
from pyroflows.transforms.base import ConditionedFlowTransform

D, C = 5, 3


def _init_actnorm(module):
    with torch.no_grad():
        module.inverse_and_log_det(torch.randn(64, *module.event_shape, dtype=module.shift.dtype) * 3 + 1)


def _eval_batchnorm(module):
    module.running_mean.normal_()
    module.running_var.uniform_(0.5, 2.0)
    module.eval()


def _generic_coupling():
    return T.Coupling(D, T.ScaleShift(), mask=T.checkerboard_mask(1, D))


CASES = [
    TransformCase("additive_coupling", lambda: T.AdditiveCoupling(D, hidden_dims=(16,)), identity_at_init=True),
    TransformCase(
        "affine_coupling_alternating", lambda: T.AffineCoupling(D, hidden_dims=(16, 16)), identity_at_init=True
    ),
    TransformCase("affine_coupling_half", lambda: T.AffineCoupling(D, mask="half", parity=1), identity_at_init=True),
    TransformCase(
        "affine_coupling_checkerboard",
        lambda: T.AffineCoupling(6, mask=T.checkerboard_mask(2, 3)),
        identity_at_init=True,
    ),
    TransformCase("coupling_generic", _generic_coupling, identity_at_init=True),
    TransformCase(
        "spline_coupling",
        lambda: T.SplineCoupling(D, count_bins=6, bound=3.0, hidden_dims=(16,)),
        identity_at_init=True,
        perturb=0.3,
        inverse_atol_float32=1e-3,
    ),
    TransformCase(
        "inverse_spline_coupling",
        lambda: T.Inverse(T.SplineCoupling(D, count_bins=6, bound=3.0, hidden_dims=(16,))),
        identity_at_init=True,
        perturb=0.3,
        inverse_atol_float32=1e-3,
    ),
    TransformCase(
        "spline_coupling_transform_copied",
        lambda: T.SplineCoupling(D, mask="half", count_bins=6, bound=3.0, hidden_dims=(16,), transform_copied=True),
        identity_at_init=True,
        perturb=0.3,
        inverse_atol_float32=1e-3,
    ),
    TransformCase(
        "affine_autoregressive_iaf",
        lambda: T.AffineAutoregressive(D, mode="iaf", hidden_dims=(16,)),
        identity_at_init=True,
        triangular=True,
    ),
    TransformCase(
        "affine_autoregressive_maf",
        lambda: T.AffineAutoregressive(D, mode="maf", order=[2, 0, 4, 1, 3]),
        identity_at_init=True,
        triangular=True,
    ),
    TransformCase(
        "affine_autoregressive_residual",
        lambda: T.AffineAutoregressive(D, hidden_dims=(16,), num_residual_blocks=2),
        identity_at_init=True,
        triangular=True,
        covers=(T.Autoregressive,),
    ),
    TransformCase(
        "spline_autoregressive_iaf",
        lambda: T.SplineAutoregressive(D, mode="iaf", count_bins=5, bound=3.0, hidden_dims=(16,)),
        identity_at_init=True,
        triangular=True,
        perturb=0.3,
        inverse_atol_float32=1e-3,
    ),
    TransformCase(
        "spline_autoregressive_maf",
        lambda: T.SplineAutoregressive(D, mode="maf", count_bins=5, bound=3.0, hidden_dims=(16,)),
        identity_at_init=True,
        triangular=True,
        perturb=0.3,
        inverse_atol_float32=1e-3,
    ),
    TransformCase("spline", lambda: T.Spline(D, count_bins=7, bound=2.0), identity_at_init=True, perturb=1.0),
    TransformCase("permute", lambda: T.Permute([3, 1, 4, 0, 2])),
    TransformCase("reverse", lambda: T.Reverse(D)),
    TransformCase("lu_linear", lambda: T.LULinear(D, random_permutation=True), perturb=0.3),
    TransformCase("lu_linear_identity", lambda: T.LULinear(D), identity_at_init=True, perturb=0.3),
    TransformCase(
        "triangular_affine", lambda: T.TriangularAffine(D), identity_at_init=True, perturb=0.3, triangular=True
    ),
    TransformCase(
        "residual",
        lambda: T.Residual(D, hidden_dims=(16,), log_det=T.LogDetEstimator("exact"), atol=1e-12),
        identity_at_init=True,
        perturb=0.3,
        inverse_atol_float32=1e-4,
    ),
    TransformCase(
        "continuous_flow",
        lambda: T.ContinuousFlow(D, hidden_dims=(16,), method="rk4", step_size=0.05),
        identity_at_init=True,
        perturb=0.3,
        inverse_atol=1e-6,
        inverse_atol_float32=1e-4,
    ),
    TransformCase("actnorm", lambda: T.ActNorm(D), prepare=_init_actnorm),
    TransformCase("batchnorm", lambda: T.BatchNorm(D), prepare=_eval_batchnorm),
    TransformCase(
        "cond_continuous_flow",
        lambda: T.ConditionalContinuousFlow(D, C, hidden_dims=(16,), method="rk4", step_size=0.05),
        identity_at_init=True,
        perturb=0.3,
    ),
    TransformCase(
        "cond_residual",
        lambda: T.ConditionalResidual(D, C, hidden_dims=(16,), log_det=T.LogDetEstimator("exact"), atol=1e-12),
        identity_at_init=True,
        perturb=0.3,
    ),
    TransformCase(
        "cond_additive_coupling", lambda: T.ConditionalAdditiveCoupling(D, C, hidden_dims=(16,)), identity_at_init=True
    ),
    TransformCase(
        "cond_affine_coupling", lambda: T.ConditionalAffineCoupling(D, C, mask="half"), identity_at_init=True
    ),
    TransformCase(
        "cond_spline_coupling",
        lambda: T.ConditionalSplineCoupling(D, C, count_bins=4, bound=3.0, hidden_dims=(16,)),
        identity_at_init=True,
        perturb=0.3,
        inverse_atol_float32=1e-3,
    ),
    TransformCase(
        "cond_inverse_spline_coupling",
        lambda: T.ConditionalFlowTransform(
            T.Inverse(T.SplineCoupling(D, context_dim=C, count_bins=4, bound=3.0, hidden_dims=(16,)))
        ),
        identity_at_init=True,
        perturb=0.3,
        inverse_atol_float32=1e-3,
    ),
    TransformCase(
        "cond_spline_coupling_transform_copied",
        lambda: T.ConditionalSplineCoupling(D, C, count_bins=4, bound=3.0, hidden_dims=(16,), transform_copied=True),
        identity_at_init=True,
        perturb=0.3,
        inverse_atol_float32=1e-3,
    ),
    TransformCase(
        "cond_affine_autoregressive",
        lambda: T.ConditionalAffineAutoregressive(D, C, mode="iaf", hidden_dims=(16,)),
        identity_at_init=True,
        triangular=True,
    ),
    TransformCase(
        "cond_spline_autoregressive",
        lambda: T.ConditionalSplineAutoregressive(D, C, count_bins=4, bound=3.0, hidden_dims=(16,)),
        identity_at_init=True,
        triangular=True,
        perturb=0.3,
        inverse_atol_float32=1e-3,
    ),
]

IMG = (4, 4, 4)


def _init_glow(module):
    _init_actnorm(module.actnorm)


CASES += [
    TransformCase("squeeze", lambda: T.Squeeze((2, 4, 6))),
    TransformCase("inverse_squeeze", lambda: T.Inverse(T.Squeeze((2, 4, 6)))),
    TransformCase("unsqueeze", lambda: T.Unsqueeze((8, 2, 3))),
    TransformCase("actnorm_image", lambda: T.ActNorm(IMG), prepare=_init_actnorm),
    TransformCase("invertible_conv1x1", lambda: T.InvertibleConv1x1(IMG, seed=0), perturb=0.3),
    TransformCase(
        "image_coupling_channel_affine", lambda: T.ImageCoupling(IMG, hidden_channels=8), identity_at_init=True
    ),
    TransformCase(
        "image_coupling_affine_sigmoid",
        lambda: T.ImageCoupling(IMG, "affine-sigmoid", parity=1, hidden_channels=8),
        identity_at_init=True,
    ),
    TransformCase(
        "image_coupling_checkerboard_additive",
        lambda: T.ImageCoupling(IMG, "additive", mask="checkerboard", parity=1, hidden_channels=8, num_blocks=0),
        identity_at_init=True,
    ),
    TransformCase(
        "image_coupling_spline",
        lambda: T.ImageCoupling((2, 2, 4), "spline", hidden_channels=8),
        identity_at_init=True,
        perturb=0.1,
        inverse_atol_float32=1e-3,
    ),
    TransformCase(
        "cond_image_coupling_vector",
        lambda: T.ConditionalImageCoupling(IMG, C, mask="checkerboard", hidden_channels=8),
        identity_at_init=True,
    ),
    TransformCase(
        "cond_image_coupling_feature_map",
        lambda: T.ConditionalImageCoupling((1, 4, 4), (2, 4, 4), mask="checkerboard", hidden_channels=8),
        identity_at_init=True,
    ),
    TransformCase("glow_step", lambda: T.GlowStep(IMG, hidden_channels=8, seed=0), prepare=_init_glow, perturb=0.1),
    TransformCase(
        "conv_residual",
        lambda: T.ConvResidual((2, 2, 2), hidden_channels=8, log_det=T.LogDetEstimator("exact"), atol=1e-12),
        identity_at_init=True,
        perturb=0.3,
        inverse_atol_float32=1e-4,
    ),
    TransformCase("logit", lambda: T.Logit((D,), alpha=0.05)),
    TransformCase("logit_image", lambda: T.Logit((1, 2, 2), alpha=0.0)),
]

# Abstract bases and helpers that are not layers of their own.
NOT_LAYERS = {T.FlowTransform, T.ConditionalFlowTransform, ConditionedFlowTransform}
