"""Fused rational-quadratic spline with a hand-written backward.

On small batches autograd's per-node cost dwarfs the arithmetic of the ~60
elementwise operations a spline needs, so one ``autograd.Function`` does all
of it: knot placement from raw parameters (softmax widths and heights,
softplus derivatives), the bin search, the bin-local map or its inverse, and
the log-derivative; its backward returns analytic gradients (the inverse by
implicit differentiation). Durkan et al., *Neural Spline Flows*,
arXiv:1906.04032.

In bin ``k`` with ``theta = (x - x_k) / w``, ``s = h / w``,
``C = d_0 + d_1 - 2 s`` and ``T = theta (1 - theta)``:

.. math::
    y = y_k + h \\frac{s\\theta^2 + d_0 T}{s + C T}, \\qquad
    \\log y' = \\log\\big(d_1\\theta^2 + 2sT + d_0(1-\\theta)^2\\big) + 2\\log s - 2\\log(s + C T)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class SplineConfig:
    count_bins: int
    bound: float
    min_bin_width: float
    min_bin_height: float
    min_derivative: float
    derivative_offset: float


def _fraction_scale(cfg: SplineConfig, like: torch.Tensor) -> tuple:
    """Per-row (width, height) minimum and scale of the softmax fractions."""
    if cfg.min_bin_width == cfg.min_bin_height:
        return cfg.min_bin_width, 1 - cfg.min_bin_width * cfg.count_bins
    minimum = like.new_tensor([[cfg.min_bin_width], [cfg.min_bin_height]])
    return minimum, 1 - minimum * cfg.count_bins


def knot_table(params: torch.Tensor, cfg: SplineConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Knot x, y positions and derivatives stacked as ``(*, 3, K+1)``, and the softmax ``(*, 2, K)``."""
    k = cfg.count_bins
    softmax = torch.softmax(params[..., : 2 * k].unflatten(-1, (2, k)).contiguous(), dim=-1)
    minimum, scale = _fraction_scale(cfg, params)
    # Knots from the cumulative sum; the last one is B up to rounding.
    positions = F.pad(torch.cumsum(minimum + scale * softmax, dim=-1), (1, 0)) * (2 * cfg.bound) - cfg.bound
    inner = cfg.min_derivative + F.softplus(params[..., 2 * k :] + cfg.derivative_offset)
    derivatives = F.pad(inner, (1, 1), value=1.0)
    return torch.cat([positions, derivatives.unsqueeze(-2)], dim=-2), softmax


def _solve_theta(dy, s, h, d0, curvature):
    """The root in [0, 1] of the bin's quadratic (Durkan et al., eq. 6-8)."""
    a = h * (s - d0) + dy * curvature
    b = h * d0 - dy * curvature
    c = -s * dy
    discriminant = (b * b - 4 * a * c).clamp(min=0)
    return ((2 * c) / (-b - discriminant.sqrt())).clamp(0, 1)


def _gather_bins(value, table, cfg, inverse):
    v = value.clamp(-cfg.bound, cfg.bound)
    edges = table[..., 1 if inverse else 0, 1:-1]
    index = (v.unsqueeze(-1) >= edges).sum(-1, keepdim=True).unsqueeze(-2).expand(*table.shape[:-1], 1)
    lo = table.gather(-1, index).squeeze(-1)
    hi = table.gather(-1, index + 1).squeeze(-1)
    return v, index, lo, hi


class RQSpline(torch.autograd.Function):
    """``(value, params) -> (out, log_det)``; ``params`` is ``(*value.shape, 3K-1)``.

    Written in the classic ``forward(ctx, ...)`` style: its ``apply`` costs a
    quarter of the ``setup_context`` style's, which matters at this size; the
    price is no ``torch.func`` transforms (use ``torch.autograd.functional``).
    """

    @staticmethod
    def forward(ctx, value, params, cfg: SplineConfig, inverse: bool):
        table, _ = knot_table(params, cfg)
        v, _, lo, hi = _gather_bins(value, table, cfg, inverse)
        x_k, y_k, d0 = lo.unbind(-1)
        w, h, _ = (hi - lo).unbind(-1)
        d1 = hi[..., 2]
        s = h / w
        curvature = d0 + d1 - 2 * s
        theta = _solve_theta(v - y_k, s, h, d0, curvature) if inverse else (v - x_k) / w
        one_minus = 1 - theta
        tt = theta * one_minus
        den = s + curvature * tt
        out = x_k + theta * w if inverse else y_k + h * (s * theta * theta + d0 * tt) / den
        ratio = s / den
        log_det = torch.log((d1 * theta * theta + 2 * s * tt + d0 * one_minus * one_minus) * ratio * ratio)
        inside = v == value
        out = torch.where(inside, out, value)
        ctx.cfg, ctx.inverse = cfg, inverse
        ctx.save_for_backward(value, params, out)
        return out, torch.where(inside, log_det, 0.0)

    @staticmethod
    def backward(ctx, g_out, g_log_det):
        value, params, out = ctx.saved_tensors
        cfg, inverse = ctx.cfg, ctx.inverse
        table, softmax = knot_table(params, cfg)
        v, index, lo, hi = _gather_bins(value, table, cfg, inverse)
        inside = v == value
        x_k, y_k, d0 = lo.unbind(-1)
        w, h, _ = (hi - lo).unbind(-1)
        d1 = hi[..., 2]
        s = h / w
        theta = ((out if inverse else v) - x_k) / w
        g_o = torch.where(inside, g_out, 0.0)
        g_l = torch.where(inside, g_log_det, 0.0)

        one_minus = 1 - theta
        tt = theta * one_minus
        d_tt = 1 - 2 * theta
        curvature = d0 + d1 - 2 * s
        inv_den = 1 / (s + curvature * tt)
        inv_num = 1 / (d1 * theta * theta + 2 * s * tt + d0 * one_minus * one_minus)
        q = (s * theta * theta + d0 * tt) * inv_den  # (y - y_k) / h
        two_tt_den = 2 * tt * inv_den
        # partial derivatives of q and of log y' (theta, s, d0, d1)
        dq_t = (2 * s * theta + (d0 - q * curvature) * d_tt) * inv_den
        dq_s = (theta * theta - q * (1 - 2 * tt)) * inv_den
        dq_d0 = tt * (1 - q) * inv_den
        dq_d1 = -q * tt * inv_den
        dl_t = 2 * (d1 * theta + s * d_tt - d0 * one_minus) * inv_num - 2 * curvature * d_tt * inv_den
        dl_s = 2 * tt * inv_num + 2 / s - 2 * (1 - 2 * tt) * inv_den
        dl_d0 = one_minus * one_minus * inv_num - two_tt_den
        dl_d1 = theta * theta * inv_num - two_tt_den
        if inverse:
            # theta solves y_k + h q(theta, s, d) = v; dv/dtheta = h dq_t.
            implicit = (g_o * w + g_l * dl_t) / (h * dq_t)
            g_v = implicit
            g_yk = -implicit
            g_s = g_l * dl_s - implicit * h * dq_s
            g_d0 = g_l * dl_d0 - implicit * h * dq_d0
            g_d1 = g_l * dl_d1 - implicit * h * dq_d1
            g_h = -implicit * q + g_s / w
            g_xk = g_o
            g_w = g_o * theta - g_s * s / w
        else:
            g_theta = g_o * h * dq_t + g_l * dl_t
            g_s = g_o * h * dq_s + g_l * dl_s
            g_d0 = g_o * h * dq_d0 + g_l * dl_d0
            g_d1 = g_o * h * dq_d1 + g_l * dl_d1
            g_h = g_o * q + g_s / w
            g_yk = g_o
            g_v = g_theta / w
            g_xk = -g_v
            g_w = -(g_theta * theta + g_s * s) / w
        g_value = torch.where(inside, g_v, g_out)
        # bin-local gradients -> knot table: lo = (x_k, y_k, d0), hi = (x_k + w, y_k + h, d1)
        g_lo = torch.stack([g_xk - g_w, g_yk - g_h, g_d0], dim=-1).unsqueeze(-1)
        g_hi = torch.stack([g_w, g_h, g_d1], dim=-1).unsqueeze(-1)
        g_table = torch.zeros_like(table).scatter_add(-1, index, g_lo).scatter_add(-1, index + 1, g_hi)
        # knot positions -> softmax fractions (reverse cumulative sum) -> raw logits
        g_cum = g_table[..., :2, 1:] * (2 * cfg.bound)
        g_frac = g_cum.flip(-1).cumsum(-1).flip(-1)
        _, scale = _fraction_scale(cfg, params)
        g_soft = scale * g_frac
        g_raw = softmax * (g_soft - (g_soft * softmax).sum(-1, keepdim=True))
        k = cfg.count_bins
        g_deriv = g_table[..., 2, 1:-1] * torch.sigmoid(params[..., 2 * k :] + cfg.derivative_offset)
        return g_value, torch.cat([g_raw.flatten(-2), g_deriv], dim=-1), None, None
