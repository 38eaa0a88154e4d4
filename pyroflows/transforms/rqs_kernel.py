"""Fused rational-quadratic spline with a hand-written backward.

Autograd through the ~60 operations of a spline, many of them over the whole
``(*, 3K-1)`` parameter tensor, costs far more than the arithmetic. One
``autograd.Function`` does it all: softmax widths and heights, the bin search,
the bin-local map or its inverse and the log-derivative, touching the
parameter-sized tensors only for the softmax, its cumulative sum and the
search; derivatives are read per element. The backward returns analytic
gradients (the inverse by implicit differentiation). Durkan et al., *Neural
Spline Flows*, arXiv:1906.04032.

In bin ``k`` with ``theta = (x - x_k) / w``, ``s = h / w``,
``C = d_0 + d_1 - 2 s`` and ``T = theta (1 - theta)``:

$$
y = y_k + h \\frac{s\\theta^2 + d_0 T}{s + C T}, \\qquad
\\log y' = \\log\\big(d_1\\theta^2 + 2sT + d_0(1-\\theta)^2\\big) + 2\\log s - 2\\log(s + C T)
$$
"""

from __future__ import annotations

import functools
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


def _minimum_and_scale(cfg: SplineConfig, like: torch.Tensor):
    """Per row (x, y): the minimum bin fraction and ``2B (1 - K min)``, floats when rows agree.

    Knot ``j`` sits at ``-B + 2B min j + scale * cumsum(softmax)[j - 1]``.
    """
    if cfg.min_bin_width == cfg.min_bin_height:
        return cfg.min_bin_width, 2 * cfg.bound * (1 - cfg.min_bin_width * cfg.count_bins)
    minimum = like.new_tensor([cfg.min_bin_width, cfg.min_bin_height])
    return minimum, 2 * cfg.bound * (1 - minimum * cfg.count_bins)


@functools.lru_cache(maxsize=64)
def _knot_offsets(cfg: SplineConfig, count: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``-B + 2B min j`` for knots ``j = 1..count``, rows x and y ``(2, count)``: where each
    knot sits before the softmax mass is added. Cached (a constant per config)."""
    steps = torch.arange(1, count + 1, dtype=dtype, device=device)
    minimum = torch.tensor([cfg.min_bin_width, cfg.min_bin_height], dtype=dtype, device=device)
    return steps * (2 * cfg.bound * minimum[:, None]) - cfg.bound


@functools.lru_cache(maxsize=16)
def _columns(k: int, device: torch.device) -> torch.Tensor:
    """``arange(k)`` as a column, cached."""
    return torch.arange(k, device=device)[:, None]


def _positions(softmax: torch.Tensor, cfg: SplineConfig) -> torch.Tensor:
    """Knots ``1..K`` as ``(*, 2, K)``."""
    _, scale = _minimum_and_scale(cfg, softmax)
    if not isinstance(scale, float):
        scale = scale.unsqueeze(-1)
    offsets = _knot_offsets(cfg, cfg.count_bins, softmax.dtype, softmax.device)
    return offsets + scale * torch.cumsum(softmax, dim=-1)


def _derivative(raw: torch.Tensor, cfg: SplineConfig) -> torch.Tensor:
    return cfg.min_derivative + F.softplus(raw + cfg.derivative_offset)


def knot_table(params: torch.Tensor, cfg: SplineConfig) -> torch.Tensor:
    """All knots for inspection: x, y positions and derivatives stacked as ``(*, 3, K+1)``."""
    k = cfg.count_bins
    positions = _positions(torch.softmax(params[..., : 2 * k].unflatten(-1, (2, k)), dim=-1), cfg)
    positions = F.pad(positions, (1, 0), value=-cfg.bound)
    derivatives = F.pad(_derivative(params[..., 2 * k :], cfg), (1, 1), value=1.0)
    return torch.cat([positions, derivatives.unsqueeze(-2)], dim=-2)


def _solve_theta(dy, s, h, d0, curvature):
    """The root in [0, 1] of the bin's quadratic ``a theta^2 + b theta + c`` (Durkan et al.,
    eq. 6-8), as ``2c / (-b - sqrt(b^2 - 4ac))`` with ``c = -s dy`` folded into the signs."""
    u = dy * curvature
    a = torch.addcmul(u, h, s - d0)
    b = torch.addcmul(-u, h, d0)
    s_dy = s * dy
    discriminant = torch.addcmul(b * b, a, s_dy, value=4).clamp_(min=0)
    return ((s_dy + s_dy) / (b + discriminant.sqrt_())).clamp_(0, 1)


def _locate(v: torch.Tensor, cum: torch.Tensor, table: torch.Tensor, cfg: SplineConfig, inverse: bool):
    """The bin of each element of ``v`` (bins-first ``cum``, ``(2, K, M)``) and
    the bin's geometry: its lower knot, width and height, end derivatives."""
    k, m = cfg.count_bins, v.numel()
    minimum, scale = _minimum_and_scale(cfg, cum)
    row = 1 if inverse else 0
    scale_row = 2 * cfg.bound * (1 - (cfg.min_bin_height if inverse else cfg.min_bin_width) * k)
    if not isinstance(minimum, float):
        minimum, scale = minimum[:, None], scale[:, None]
    # search the interior knots 1..K-1 of the input's row
    offsets = _knot_offsets(cfg, k - 1, cum.dtype, cum.device)[row, :, None]
    edges = torch.add(offsets, cum[row, : k - 1], alpha=scale_row)
    bins = (v >= edges).sum(0, keepdim=True)  # (1, M)
    first = bins == 0
    below = (bins - 1).clamp_(min=0)
    cum_hi = cum.gather(1, bins.expand(2, m)[:, None]).squeeze(1)  # (2, M): cumsum up to knot k + 1
    cum_lo = torch.where(first, 0.0, cum.gather(1, below.expand(2, m)[:, None]).squeeze(1))
    lo = (2 * cfg.bound) * minimum * bins.to(cum.dtype) - cfg.bound + scale * cum_lo
    width = (cum_hi - cum_lo).mul_(scale).add_((2 * cfg.bound) * minimum)  # bin widths and heights
    raw = table[2 * k :]
    if k > 1:  # derivatives at the bin's ends: softplus of z, 1 at the outer knots
        above = bins.clamp(max=k - 2)
        z_lo = raw.gather(0, below).squeeze(0) + cfg.derivative_offset
        z_hi = raw.gather(0, above).squeeze(0) + cfg.derivative_offset
        last = bins.squeeze(0) == k - 1
        d0 = torch.where(first.squeeze(0), 1.0, F.softplus(z_lo).add_(cfg.min_derivative))
        d1 = torch.where(last, 1.0, F.softplus(z_hi).add_(cfg.min_derivative))
    else:
        above, last = bins, first.squeeze(0)
        z_lo = z_hi = d0 = d1 = torch.ones_like(v)
    return bins, below, above, first, last, lo, width, d0, d1, z_lo, z_hi, cum_lo, cum_hi


class RQSpline(torch.autograd.Function):
    """``(value, params) -> (out, log_det)``; ``params`` is ``(*value.shape, 3K-1)``.

    The work runs bins-first: parameters as ``(3K-1, M)`` over the ``M``
    elements, so every operation loops over the long element axis, not over
    the ``K`` bins. The elements are taken in the memory order of ``params``,
    so a conditioner that writes its parameters bins-first (``DenseNN`` with
    ``params_major=True``) costs no transposing copy.

    Written in the classic ``forward(ctx, ...)`` style: its ``apply`` costs a
    quarter of the ``setup_context`` style's, which matters at this size; the
    price is no ``torch.func`` transforms (use ``torch.autograd.functional``).
    """

    @staticmethod
    def forward(ctx, value, params, cfg: SplineConfig, inverse: bool):
        k = cfg.count_bins
        order = _element_order(params)
        ctx.order, ctx.back = order, None if order is None else _inverse_order(order)
        ctx.permuted = value.shape if order is None else [value.shape[i] for i in order]
        m = value.numel()
        if order is None:
            flat, table = value.reshape(m), params.reshape(m, 3 * k - 1).T.contiguous()
        else:  # no copy when params are bins-first
            flat, table = value.permute(order).reshape(m), params.permute(-1, *order).reshape(3 * k - 1, m)
        softmax = torch.softmax(table[: 2 * k].view(2, k, m), dim=1)
        cum = _cumsum_bins(softmax)  # (2, K, M)
        v = flat.clamp(-cfg.bound, cfg.bound)
        inside = v == flat
        bins, below, above, first, last, lo, width, d0, d1, z_lo, z_hi, cum_lo, cum_hi = _locate(
            v, cum, table, cfg, inverse
        )
        x_k, y_k = lo.unbind(0)
        w, h = width.unbind(0)
        s = h / w
        curvature = torch.add(d0 + d1, s, alpha=-2)
        if inverse:
            dy = v - y_k
            theta = _solve_theta(dy, s, h, d0, curvature)
            q = dy / h  # (y - y_k) / h, kept for the backward
        else:
            theta = (v - x_k) / w
        one_minus = 1 - theta
        tt = theta * one_minus
        theta2 = theta * theta
        den = torch.addcmul(s, curvature, tt)
        if inverse:
            out = torch.addcmul(x_k, theta, w)
        else:
            q = torch.addcmul(s * theta2, d0, tt).div_(den)
            out = torch.addcmul(y_k, h, q)
        numerator = torch.addcmul(torch.addcmul(d1 * theta2, s, tt, value=2), d0, one_minus * one_minus)
        log_det = torch.log(numerator * (s / den).square_())
        ctx.cfg, ctx.inverse = cfg, inverse
        ctx.save_for_backward(
            inside, width, softmax, bins, below, above, first, last, z_lo, z_hi, cum_lo, cum_hi,
            theta, one_minus, theta2, tt, s, d0, d1, curvature, q, den, numerator,
        )  # fmt: skip
        out, log_det = torch.where(inside, out, flat), torch.where(inside, log_det, 0.0)
        return _unflatten(out, ctx), _unflatten(log_det, ctx)

    @staticmethod
    def backward(ctx, g_out, g_log_det):
        inside, width, *saved = ctx.saved_tensors
        cfg, k = ctx.cfg, ctx.cfg.count_bins
        g_out, g_log_det = _flatten(g_out, ctx.order), _flatten(g_log_det, ctx.order)
        g_o = torch.where(inside, g_out, 0.0)
        g_l = torch.where(inside, g_log_det, 0.0)
        g_v, *local = _local_gradients(g_o, g_l, ctx.inverse, *width.unbind(0), *saved[10:])
        g_table = _table_gradient(cfg, *saved[:10], local)
        g_value = torch.where(inside, g_v, g_out)
        if ctx.order is None:
            g_params = g_table.T.view(*ctx.permuted, 3 * k - 1)
        else:
            g_params = g_table.view(3 * k - 1, *ctx.permuted).permute(*[b + 1 for b in ctx.back], 0)
        return _unflatten(g_value, ctx), g_params, None, None


def _local_gradients(g_o, g_l, inverse, w, h, theta, one_minus, theta2, tt, s, d0, d1, curvature, q, den, numerator):
    """The output and log-det gradients (``g_o``, ``g_l``) taken back to the
    input and the bin's own quantities: knot position, width, height and end derivatives."""
    g_l2 = g_l + g_l  # the log-det partials below are halved
    inv_den, inv_num = den.reciprocal(), numerator.reciprocal()
    d_tt = one_minus - theta  # d tt / d theta
    one_minus_2tt = torch.rsub(tt, 1.0, alpha=2)
    tt_den = tt * inv_den
    qt_den = q * tt_den
    # partials of q = (y - y_k) / h in theta, s, d0 (d1: -qt_den), and halves of those of log y'
    dq_t = torch.addcmul(torch.addcmul(d0, q, curvature, value=-1) * d_tt, s, theta, value=2) * inv_den
    dq_s = torch.addcmul(theta2, q, one_minus_2tt, value=-1) * inv_den
    dq_d0 = tt_den - qt_den
    half_dl_t = torch.addcmul(torch.addcmul(d1 * theta, s, d_tt), d0, one_minus, value=-1) * inv_num
    half_dl_t -= curvature * d_tt * inv_den
    half_dl_s = torch.addcmul(tt * inv_num, one_minus_2tt, inv_den, value=-1) + s.reciprocal()
    dl_d0 = torch.add(one_minus * one_minus * inv_num, tt_den, alpha=-2)
    dl_d1 = torch.add(theta2 * inv_num, tt_den, alpha=-2)
    if inverse:
        # theta solves y_k + h q(theta, s, d) = v; dv/dtheta = h dq_t.
        implicit = torch.addcmul(g_o * w, g_l2, half_dl_t) / (h * dq_t)
        g_v, g_xk, g_yk = implicit, g_o, -implicit
        implicit_h = implicit * h
        g_s = torch.addcmul(g_l2 * half_dl_s, implicit_h, dq_s, value=-1)
        g_d0 = torch.addcmul(g_l * dl_d0, implicit_h, dq_d0, value=-1)
        g_d1 = torch.addcmul(g_l * dl_d1, implicit_h, qt_den)
        g_h = torch.addcmul(g_s / w, implicit, q, value=-1)
        g_w = torch.addcmul(g_o * theta, g_s, s / w, value=-1)
    else:
        out_h = g_o * h
        g_theta = torch.addcmul(out_h * dq_t, g_l2, half_dl_t)
        g_s = torch.addcmul(out_h * dq_s, g_l2, half_dl_s)
        g_d0 = torch.addcmul(out_h * dq_d0, g_l, dl_d0)
        g_d1 = torch.addcmul(g_l * dl_d1, out_h, qt_den, value=-1)
        g_h = torch.addcmul(g_s / w, g_o, q)
        g_v = g_theta / w
        g_xk, g_yk = -g_v, g_o
        g_w = torch.addcmul(g_theta * theta, g_s, s).div_(w).neg_()
    return g_v, g_xk, g_yk, g_w, g_h, g_d0, g_d1


def _table_gradient(cfg, softmax, bins, below, above, first, last, z_lo, z_hi, cum_lo, cum_hi, local):
    """The bin-local gradients taken back to the bins-first parameter table ``(3K - 1, M)``."""
    g_xk, g_yk, g_w, g_h, g_d0, g_d1 = local
    k, m = cfg.count_bins, softmax.shape[-1]
    # knots: lo = knot k (-B for k = 0), hi = knot k + 1, knot j + 1 = ... + scale * cum[j], so
    # d/dcum[j] = G_hi [j <= k] + G_lo [j < k] with G = scale * (bin-local gradient); through the
    # softmax, g_raw = e * (d/dcum - dot) with dot = sum_j e_j d/dcum[j] = G_hi cum[k] + G_lo cum[k-1].
    _, scale = _minimum_and_scale(cfg, softmax)
    if not isinstance(scale, float):
        scale = scale[:, None]
    g_hi = torch.stack([g_w, g_h]) * scale  # (2, M)
    g_sum = torch.stack([g_xk, g_yk]) * scale  # G_hi + G_lo
    dot = torch.addcmul(g_hi * cum_hi, g_sum - g_hi, cum_lo)
    columns = _columns(k, bins.device)
    coefficient = torch.where(columns < bins, (g_sum - dot)[:, None], -dot[:, None])  # (2, K, M)
    coefficient.scatter_add_(1, bins.expand(2, m)[:, None], g_hi[:, None])  # bin k itself: + g_hi
    g_table = softmax.new_empty(3 * k - 1, m)
    torch.mul(softmax, coefficient, out=g_table[: 2 * k].view(2, k, m))
    if k > 1:
        g_deriv = g_table[2 * k :]
        g_deriv.zero_()
        g_deriv.scatter_add_(0, below, torch.where(first, 0.0, g_d0 * torch.sigmoid(z_lo)))
        g_deriv.scatter_add_(0, above, torch.where(last, 0.0, g_d1 * torch.sigmoid(z_hi))[None])
    return g_table


def _element_order(params: torch.Tensor) -> list[int] | None:
    """The batch dims of ``params`` from outermost to innermost in memory
    (``None``: already in order)."""
    strides = params.stride()[:-1]
    order = sorted(range(len(strides)), key=lambda i: -strides[i])
    return None if order == list(range(len(order))) else order


def _inverse_order(order: list[int]) -> list[int]:
    return sorted(range(len(order)), key=order.__getitem__)


def _flatten(tensor: torch.Tensor, order: list[int] | None) -> torch.Tensor:
    """A value-shaped tensor as ``(M,)`` in element order."""
    return tensor.reshape(-1) if order is None else tensor.permute(order).reshape(-1)


def _unflatten(flat: torch.Tensor, ctx) -> torch.Tensor:
    """``(M,)`` in element order back to the value's shape (a view)."""
    return flat.view(ctx.permuted) if ctx.back is None else flat.view(ctx.permuted).permute(ctx.back)


_PLANES_MIN = 8192  # elements from which adding planes beats torch.cumsum across dim 1


def _cumsum_bins(softmax: torch.Tensor) -> torch.Tensor:
    """Cumulative sums over dim 1 of ``(2, K, M)``. ``torch.cumsum`` walks the
    K-long strided lines one by one; for many elements adding planes is faster."""
    if softmax.shape[-1] < _PLANES_MIN:
        return torch.cumsum(softmax, dim=1)
    cum = softmax.clone()
    for j in range(1, softmax.shape[1]):
        cum[:, j] += cum[:, j - 1]
    return cum
