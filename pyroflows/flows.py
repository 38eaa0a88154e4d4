"""Factories that stack layers into ready-to-use flows.

Each returns a Pyro ``ComposeTransformModule`` (or, with ``context_dim``, a
``ConditionalComposeTransformModule``) for ``dist.TransformedDistribution``
(or ``dist.ConditionalTransformedDistribution``).

Examples:
    >>> import pyro.distributions as dist
    >>> flow = nsf(2, num_transforms=2)
    >>> d = dist.TransformedDistribution(dist.Normal(torch.zeros(2), 1.0).to_event(1), flow)
    >>> d.log_prob(torch.zeros(5, 2)).shape
    torch.Size([5])
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from pyro.distributions.conditional import ConditionalComposeTransformModule
from pyro.distributions.torch_transform import ComposeTransformModule

from pyroflows.transforms import (
    ActNorm,
    AdditiveCoupling,
    AffineAutoregressive,
    AffineCoupling,
    ConditionalFlowTransform,
    ContinuousFlow,
    FlowTransform,
    Inverse,
    LogDetEstimator,
    Residual,
    Reverse,
    Spline,
    SplineAutoregressive,
    SplineCoupling,
)

__all__ = [
    "ffjord",
    "iaf",
    "latent_flow",
    "maf",
    "nice",
    "nsf",
    "realnvp",
    "resflow",
]  # image flows: pyroflows.images


def _check(input_dim: int, num_transforms: int) -> None:
    if not isinstance(input_dim, int) or input_dim < 1:
        raise ValueError(f"input_dim must be a positive int, got {input_dim!r}")
    if not isinstance(num_transforms, int) or num_transforms < 1:
        raise ValueError(f"num_transforms must be a positive int, got {num_transforms!r}")


def _compose(layers: list[FlowTransform], context_dim: int | None):
    if context_dim is None:
        return ComposeTransformModule(layers)
    wrapped = [ConditionalFlowTransform(t) if t.context_dim is not None else t for t in layers]
    return ConditionalComposeTransformModule(wrapped)


def _couplings(make: Callable[[int], FlowTransform], input_dim: int, num_transforms: int):
    if input_dim < 2:
        raise ValueError(f"coupling flows need input_dim >= 2, got {input_dim}")
    return [make(i % 2) for i in range(num_transforms)]


def nice(
    input_dim: int,
    context_dim: int | None = None,
    num_transforms: int = 4,
    hidden_dims: Sequence[int] = (64, 64),
    mask: str | torch.Tensor = "alternating",
):
    """NICE (arXiv:1410.8516): additive couplings of alternating parity, then
    a learned diagonal scaling (`ActNorm`), since additive couplings
    alone preserve volume."""
    _check(input_dim, num_transforms)
    layers = _couplings(
        lambda p: AdditiveCoupling(input_dim, mask, p, hidden_dims, context_dim), input_dim, num_transforms
    )
    return _compose([*layers, ActNorm(input_dim)], context_dim)


def realnvp(
    input_dim: int,
    context_dim: int | None = None,
    num_transforms: int = 4,
    hidden_dims: Sequence[int] = (64, 64),
    mask: str | torch.Tensor = "alternating",
    max_log_scale: float | None = 5.0,
):
    """RealNVP (arXiv:1605.08803): affine couplings of alternating parity."""
    _check(input_dim, num_transforms)
    layers = _couplings(
        lambda p: AffineCoupling(input_dim, mask, p, hidden_dims, context_dim, max_log_scale=max_log_scale),
        input_dim,
        num_transforms,
    )
    return _compose(layers, context_dim)


def _autoregressive(make: Callable[[], FlowTransform], input_dim: int, num_transforms: int, context_dim):
    layers: list[FlowTransform] = []
    for i in range(num_transforms):
        if i:
            layers.append(Reverse(input_dim))
        layers.append(make())
    return _compose(layers, context_dim)


def maf(
    input_dim: int,
    context_dim: int | None = None,
    num_transforms: int = 4,
    hidden_dims: Sequence[int] = (64, 64),
    num_residual_blocks: int = 0,
):
    """MAF (arXiv:1705.07057): affine autoregressive layers, density in one
    pass per layer, sampling in ``input_dim`` passes."""
    _check(input_dim, num_transforms)
    return _autoregressive(
        lambda: AffineAutoregressive(input_dim, "maf", hidden_dims, context_dim, num_residual_blocks),
        input_dim,
        num_transforms,
        context_dim,
    )


def iaf(
    input_dim: int,
    context_dim: int | None = None,
    num_transforms: int = 4,
    hidden_dims: Sequence[int] = (64, 64),
    num_residual_blocks: int = 0,
):
    """IAF (arXiv:1606.04934): affine autoregressive layers, sampling with
    ``log_prob`` of its own samples in one pass per layer (the VI case)."""
    _check(input_dim, num_transforms)
    return _autoregressive(
        lambda: AffineAutoregressive(input_dim, "iaf", hidden_dims, context_dim, num_residual_blocks),
        input_dim,
        num_transforms,
        context_dim,
    )


_SPLINE_DIRECTIONS = ("base_to_data", "data_to_base")


def nsf(
    input_dim: int,
    context_dim: int | None = None,
    num_transforms: int = 4,
    hidden_dims: Sequence[int] = (64, 64),
    count_bins: int = 8,
    bound: float = 5.0,
    variant: str = "coupling",
    mode: str = "maf",
    num_residual_blocks: int = 0,
    transform_copied: bool = False,
    spline_direction: str | None = None,
):
    """Neural spline flow (arXiv:1906.04032).

    Args:
        variant: ``"coupling"`` (both directions one pass per layer; needs
            ``input_dim >= 2``) or ``"autoregressive"``.
        transform_copied: coupling variant only: each layer also passes its
            copied half through an unconditional spline with free parameters
            (see `SplineCoupling`).
        spline_direction: coupling variant only: ``"data_to_base"`` (the
            default: each layer is an `Inverse`
            coupling whose splines map data to base, as in the NSF paper,
            nflows, normflows and zuko; it fits 2-D densities better) or
            ``"base_to_data"`` (Pyro's ``spline_coupling`` convention). Both
            directions cost one pass per layer either way; the function
            classes differ. The autoregressive variant picks its side with ``mode``.
        mode: for the autoregressive variant, ``"maf"`` (cheap density) or
            ``"iaf"`` (cheap sampling).
    """
    _check(input_dim, num_transforms)
    if spline_direction not in (None, *_SPLINE_DIRECTIONS):
        raise ValueError(f"spline_direction must be one of {_SPLINE_DIRECTIONS}, got {spline_direction!r}")
    spline = {"count_bins": count_bins, "bound": bound}
    if variant == "coupling":

        def layer(parity):
            coupling = SplineCoupling(
                input_dim, "alternating", parity, hidden_dims, context_dim, transform_copied=transform_copied, **spline
            )
            return coupling if spline_direction == "base_to_data" else Inverse(coupling)

        return _compose(_couplings(layer, input_dim, num_transforms), context_dim)
    if variant == "autoregressive":
        if transform_copied or spline_direction is not None:
            raise ValueError("transform_copied and spline_direction apply to the coupling variant only")
        return _autoregressive(
            lambda: SplineAutoregressive(input_dim, mode, hidden_dims, context_dim, num_residual_blocks, **spline),
            input_dim,
            num_transforms,
            context_dim,
        )
    raise ValueError(f"variant must be 'coupling' or 'autoregressive', got {variant!r}")


def resflow(
    input_dim: int,
    context_dim: int | None = None,
    num_transforms: int = 4,
    hidden_dims: Sequence[int] = (64, 64),
    coeff: float = 0.97,
    log_det: LogDetEstimator | None = None,
    actnorm: bool = True,
    atol: float = 1e-6,
    max_iterations: int = 200,
):
    """Residual flow (arXiv:1906.02735): residual blocks ``x = y + g(y)`` with
    Lip(g) <= ``coeff`` < 1, each followed by an `ActNorm` (data
    initialised) when ``actnorm``. Density evaluation is one pass per block;
    sampling solves a fixed point per block. ``log_det`` defaults to the
    unbiased Russian-roulette estimator; pass ``LogDetEstimator("exact")`` for
    small ``input_dim``."""
    _check(input_dim, num_transforms)
    layers: list[FlowTransform] = []
    for _ in range(num_transforms):
        layers.append(
            Residual(
                input_dim,
                hidden_dims,
                context_dim,
                coeff=coeff,
                log_det=log_det,
                atol=atol,
                max_iterations=max_iterations,
            )
        )
        if actnorm:
            layers.append(ActNorm(input_dim))
    return _compose(layers, context_dim)


def ffjord(
    input_dim: int,
    context_dim: int | None = None,
    num_transforms: int = 1,
    hidden_dims: Sequence[int] = (64, 64),
    trace: str | None = None,
    regularize: bool = False,
    method: str = "dopri5",
    rtol: float = 1e-5,
    atol: float = 1e-5,
    adjoint: bool = False,
):
    """FFJORD (arXiv:1810.01367): ``num_transforms`` continuous flows in a row.
    ``trace`` defaults to exact for ``input_dim <= 8``, Hutchinson above."""
    _check(input_dim, num_transforms)
    trace = trace or ("exact" if input_dim <= 8 else "hutchinson")
    layers: list[FlowTransform] = [
        ContinuousFlow(
            input_dim,
            hidden_dims,
            context_dim,
            trace=trace,
            regularize=regularize,
            method=method,
            rtol=rtol,
            atol=atol,
            adjoint=adjoint,
        )
        for _ in range(num_transforms)
    ]
    return _compose(layers, context_dim)


PRESETS: dict[str, Callable] = {
    "nsf": nsf,
    "iaf": iaf,
    "realnvp": realnvp,
    "nice": nice,
    "resflow": resflow,
    "ffjord": ffjord,
}
EXACT_LOG_DET_MAX_DIM = 16  # resflow preset: exact log-det up to this latent size, Russian roulette above


def default_options(flow: str, latent_dim: int) -> dict:
    """The flow options `AutoFlow` uses for ``latent_dim`` latents.

    | option | default |
    |---|---|
    | num_transforms | 2 if D <= 10, else 3 |
    | hidden_dims | (max(32, 4 D),) * 2, capped at 256 units |
    | count_bins (nsf) | 8; the spline box is [-5, 5] (whitened space) |
    | nsf variant | autoregressive, IAF mode (sampling and the density of its own samples in one pass) |
    | resflow log-det | exact if D <= 16, else Russian roulette |
    | ffjord | one continuous flow, dopri5, exact trace if D <= 8, else Hutchinson |
    """
    width = min(256, max(32, 4 * latent_dim))
    options: dict = {"num_transforms": 2 if latent_dim <= 10 else 3, "hidden_dims": (width, width)}
    if flow == "nsf":
        options.update(count_bins=8, bound=5.0, variant="autoregressive", mode="iaf")
    if flow == "ffjord":
        options = {"num_transforms": 1, "hidden_dims": (width, width)}
    if flow == "resflow":
        method = "exact" if latent_dim <= EXACT_LOG_DET_MAX_DIM else "roulette"
        options.update(log_det=LogDetEstimator(method), actnorm=False)
    return options


def latent_flow(name: str, dim: int, **options) -> ComposeTransformModule:
    """Preset ``name`` over ``dim`` latents, built to work without data (flow
    guides and priors): in 1-D, where no coupling or autoregressive structure
    exists, an elementwise spline (``count_bins`` 16 and ``bound`` 5 unless
    given); `ActNorm` layers start at the identity instead of waiting
    for a first batch."""
    if name not in PRESETS:
        raise ValueError(f"flow must be one of {sorted(PRESETS)}, got {name!r}")
    if dim == 1:
        spline = Spline(1, count_bins=options.get("count_bins", 16), bound=options.get("bound", 5.0))
        return ComposeTransformModule([spline])
    flow = PRESETS[name](dim, **options)
    for layer in flow.modules():
        if isinstance(layer, ActNorm):
            layer.skip_data_init()
    return flow
