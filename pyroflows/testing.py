"""The transform contract as executable checks (public).

Describe a layer with a `TransformCase` and run `check_transform`
(or each ``check_*`` on its own). The project's own tests run every public
layer through these; third-party layers can do the same.

Examples:
    >>> from pyroflows.transforms import AffineCoupling
    >>> case = TransformCase("affine", lambda: AffineCoupling(3), identity_at_init=True)
    >>> check_transform(case)
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass, field

import pyro.distributions as dist
import torch

from pyroflows.transforms.base import ConditionalFlowTransform, FlowTransform

BATCH_SHAPES = ((), (3,), (2, 3))


@dataclass(frozen=True)
class TransformCase:
    """One layer configuration and what it claims.

    Args:
        name: test id.
        build: makes a fresh `FlowTransform` or `ConditionalFlowTransform`.
        covers: public classes this case stands for (default: the built type).
        inverse_atol: inverse tolerance in float64 (1e-6 for analytic inverses).
        inverse_atol_float32: the same in float32 (steep splines amplify
            rounding: a slope of 1000 turns 1e-7 in ``x`` into 1e-4 in ``y``).
        batch_independent: ``False`` for layers whose output mixes the batch.
        identity_at_init: the freshly built layer is the identity.
        triangular: the Jacobian is lower triangular in the layer's ``made.order``
            (in index order for layers without a MADE).
        perturb: std of noise added to every parameter before the checks, so
            they do not run at the identity.
        prepare: called on the layer after perturbation (e.g. set eval mode).
    """

    name: str
    build: Callable[[], torch.nn.Module]
    covers: tuple[type, ...] = ()
    inverse_atol: float = 1e-6
    inverse_atol_float32: float = 1e-4
    batch_independent: bool = True
    identity_at_init: bool = False
    triangular: bool = False
    perturb: float = 0.2
    prepare: Callable[[torch.nn.Module], None] | None = None
    extra: dict = field(default_factory=dict)


def _kernel(module: torch.nn.Module) -> FlowTransform:
    return module.kernel if isinstance(module, ConditionalFlowTransform) else module


def instantiate(case: TransformCase, dtype: torch.dtype = torch.float64, seed: int = 0) -> torch.nn.Module:
    """Build, cast, perturb and prepare the layer of ``case``."""
    torch.manual_seed(seed)
    module = case.build().to(dtype)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(case.perturb * torch.randn_like(p))
    if case.prepare is not None:
        case.prepare(module)
    return module


def sample_inputs(module: torch.nn.Module, batch_shape=(4,), dtype=torch.float64, seed: int = 1, output=False):
    """A random input (or, with ``output=True``, a point of the layer's
    codomain) and, for conditional layers, a context of the given batch shape."""
    gen = torch.Generator().manual_seed(seed)
    kernel = _kernel(module)
    shape = kernel.output_shape if output else kernel.event_shape
    x = torch.randn(*batch_shape, *shape, generator=gen, dtype=dtype)
    context = None
    if kernel.context_shape is not None:
        context = torch.randn(*batch_shape, *kernel.context_shape, generator=gen, dtype=dtype)
    if output and not bool(kernel.codomain.check(x).all()):  # e.g. (0, 1): map an input there
        x = torch.randn(*batch_shape, *kernel.event_shape, generator=gen, dtype=dtype)
        with torch.no_grad():
            x = kernel.forward_and_log_det(x, context)[0]
    return x, context


def bind(module: torch.nn.Module, context: torch.Tensor | None):
    """The Pyro ``Transform`` for ``module`` at ``context``."""
    return module.condition(context) if context is not None else module


def _close(a, b, atol, what):
    if a.shape != b.shape:
        raise AssertionError(f"{what}: shape {tuple(a.shape)} != {tuple(b.shape)}")
    err = (a - b).abs().max().item() if a.numel() else 0.0
    if not err <= atol:
        raise AssertionError(f"{what}: max abs error {err:.3g} > {atol:.3g}")


def check_shapes(case: TransformCase, dtype=torch.float64) -> None:
    """Outputs keep the input shape; log-dets have the batch shape."""
    module = instantiate(case, dtype)
    kernel = _kernel(module)
    for batch in BATCH_SHAPES:
        x, context = sample_inputs(module, batch, dtype)
        y, log_det = kernel.forward_and_log_det(x, context)
        x_back, log_det_inv = kernel.inverse_and_log_det(y, context)
        for name, value, shape in (
            ("y", y, (*batch, *kernel.output_shape)),
            ("x", x_back, x.shape),
            ("log_det", log_det, batch),
            ("inverse log_det", log_det_inv, batch),
        ):
            if value.shape != torch.Size(shape):
                raise AssertionError(f"batch {batch}: {name} shape {tuple(value.shape)} != {tuple(shape)}")
            if not torch.isfinite(value).all():
                raise AssertionError(f"batch {batch}: {name} is not finite")


def check_inverse(case: TransformCase, dtype=torch.float64) -> None:
    """``f^{-1}(f(x)) = x`` and ``f(f^{-1}(y)) = y`` with the cache bypassed."""
    module = instantiate(case, dtype)
    kernel = _kernel(module)
    atol = case.inverse_atol if dtype == torch.float64 else case.inverse_atol_float32
    x, context = sample_inputs(module, (16,), dtype)
    y, _ = kernel.forward_and_log_det(x, context)
    _close(kernel.inverse_and_log_det(y, context)[0], x, atol, "inverse(forward(x))")
    y2, _ = sample_inputs(module, (16,), dtype, seed=2, output=True)
    x2, _ = kernel.inverse_and_log_det(y2, context)
    _close(kernel.forward_and_log_det(x2, context)[0], y2, atol, "forward(inverse(y))")


def check_log_det(case: TransformCase, dtype=torch.float64) -> None:
    """Log-dets equal ``slogdet`` of the autograd Jacobian, both directions;
    the inverse transform's log-det is minus the forward one; triangular
    layers have triangular Jacobians."""
    module = instantiate(case, dtype)
    kernel = _kernel(module)
    x, context = sample_inputs(module, (3,), dtype)
    atol = 1e-6 if dtype == torch.float64 else 1e-3
    for i in range(x.shape[0]):
        ctx = None if context is None else context[i]
        jac = torch.autograd.functional.jacobian(
            lambda v, c=ctx: kernel.forward_and_log_det(v, c, validate=False)[0], x[i]
        )
        _, expected = torch.linalg.slogdet(jac.reshape(x[i].numel(), x[i].numel()))  # same size out and in
        if not torch.isfinite(expected):
            raise AssertionError(f"the autograd Jacobian of the forward map is singular (log|det| {expected})")
        y_i, log_det = kernel.forward_and_log_det(x[i], ctx)
        _close(log_det, expected, atol * max(1.0, abs(expected.item())), "forward log_det vs Jacobian")
        _, log_det_inv = kernel.inverse_and_log_det(y_i, ctx)
        _close(log_det_inv, expected, max(atol, 10 * case.inverse_atol), "inverse log_det vs Jacobian")
        if case.triangular:
            order = kernel.made.order if hasattr(kernel, "made") else torch.arange(jac.shape[0])
            rank = torch.empty_like(order)
            rank[order] = torch.arange(len(rank))
            upper = rank[None, :] > rank[:, None]
            if jac[upper].abs().max() > 0:
                raise AssertionError("Jacobian is not triangular in the autoregressive order")
    transform = bind(module, context)
    y = transform(x)
    _close(
        transform.inv.log_abs_det_jacobian(y, x),
        -transform.log_abs_det_jacobian(x, y),
        atol,
        "inverse transform log-det vs minus forward",
    )


def check_cache(case: TransformCase, dtype=torch.float64) -> None:
    """Cached and uncached results agree, and no result goes stale after a
    parameter update."""
    module = instantiate(case, dtype)
    kernel = _kernel(module)
    x, context = sample_inputs(module, (5,), dtype)
    transform = bind(module, context)
    y = transform(x)
    if transform.inv(y) is not x:
        raise AssertionError("inverse of a cached forward output did not come from the cache")
    y_ref, log_det_ref = kernel.forward_and_log_det(x, context)
    _close(y, y_ref, 1e-12, "cached forward")
    _close(transform.log_abs_det_jacobian(x, y), log_det_ref, 1e-10, "cached log_det")
    data, _ = sample_inputs(module, (5,), dtype, seed=3, output=True)
    x_data = transform.inv(data)
    x_ref, log_det_ref = kernel.inverse_and_log_det(data, context)
    _close(x_data, x_ref, 1e-12, "cached inverse")
    _close(transform.log_abs_det_jacobian(x_data, data), log_det_ref, 1e-10, "cached inverse log_det")
    params = list(module.parameters())
    if not params:
        return
    with torch.no_grad():
        for p in params:
            p.add_(0.1)
    for name, fresh, value in (
        ("forward", transform(x), kernel.forward_and_log_det(x, context)[0]),
        ("inverse", transform.inv(data), kernel.inverse_and_log_det(data, context)[0]),
    ):
        _close(fresh, value, 1e-12, f"{name} after a parameter update (stale cache)")


def check_batch_independence(case: TransformCase, dtype=torch.float64) -> None:
    """Changing one batch element leaves the others' outputs unchanged."""
    if not case.batch_independent:
        return
    module = instantiate(case, dtype)
    kernel = _kernel(module)
    for output, direction in ((False, kernel.forward_and_log_det), (True, kernel.inverse_and_log_det)):
        x, context = sample_inputs(module, (4,), dtype, output=output)
        y, log_det = direction(x, context)
        x2 = x.clone()
        x2[0] = sample_inputs(module, (1,), dtype, seed=5, output=output)[0][0]
        y2, log_det2 = direction(x2, context)
        _close(y2[1:], y[1:], 1e-12, "other batch elements' outputs")
        _close(log_det2[1:], log_det[1:], 1e-12, "other batch elements' log_det")


def _base(kernel: FlowTransform, dtype):
    zeros = torch.zeros(kernel.event_shape, dtype=dtype)
    return dist.Normal(zeros, 1.0).to_event(len(kernel.event_shape))


def check_gradients(case: TransformCase, dtype=torch.float64) -> None:
    """Every parameter gets a finite gradient from ``log_prob`` and from ``rsample``."""
    module = instantiate(case, dtype)
    kernel = _kernel(module)
    if not list(module.parameters()):
        return
    data, context = sample_inputs(module, (8,), dtype, output=True)
    for name in ("log_prob", "rsample"):
        module.zero_grad()
        d = dist.TransformedDistribution(
            _base(kernel, dtype).expand(data.shape[: -len(kernel.output_shape)]), bind(module, context)
        )
        loss = d.log_prob(data).sum() if name == "log_prob" else d.rsample().square().sum()
        loss.backward()
        for pname, p in module.named_parameters():
            if p.grad is None:
                raise AssertionError(f"{name}: parameter {pname} got no gradient")
            if not torch.isfinite(p.grad).all():
                raise AssertionError(f"{name}: parameter {pname} got a non-finite gradient")


def check_context(case: TransformCase, dtype=torch.float64) -> None:
    """For conditional layers, a different context gives a different output."""
    module = instantiate(case, dtype)
    kernel = _kernel(module)
    if kernel.context_shape is None:
        return
    x, context = sample_inputs(module, (4,), dtype)
    y1 = kernel.forward_and_log_det(x, context)[0]
    y2 = kernel.forward_and_log_det(x, context + 1.0)[0]
    if (y1 - y2).abs().max() < 1e-6:
        raise AssertionError("output does not depend on the context")
    y_b = kernel.forward_and_log_det(x[:1], context)[0]  # context batch dims broadcast
    if y_b.shape != (*x.shape[: x.dim() - len(kernel.event_shape)], *kernel.output_shape):
        raise AssertionError(f"context batch dims did not broadcast: {tuple(y_b.shape)}")


def check_identity_at_init(case: TransformCase, dtype=torch.float64) -> None:
    """A freshly built layer is the identity, where it claims to be."""
    if not case.identity_at_init:
        return
    torch.manual_seed(0)
    module = case.build().to(dtype)
    kernel = _kernel(module)
    x, context = sample_inputs(module, (6,), dtype)
    y, log_det = kernel.forward_and_log_det(x, context)
    _close(y, x, 1e-10, "identity at init")
    _close(log_det, torch.zeros_like(log_det), 1e-10, "zero log-det at init")


def check_save_load(case: TransformCase, dtype=torch.float64) -> None:
    """``state_dict`` and ``torch.save`` round trips give identical outputs."""
    module = instantiate(case, dtype)
    x, context = sample_inputs(module, (5,), dtype)
    y = _kernel(module).forward_and_log_det(x, context)[0]
    buffer = io.BytesIO()
    torch.save(module.state_dict(), buffer)
    buffer.seek(0)
    torch.manual_seed(123)
    fresh = case.build().to(dtype)
    fresh.load_state_dict(torch.load(buffer))
    fresh.train(module.training)
    x_other, _ = sample_inputs(module, (5,), dtype, seed=7)  # a fresh batch must not re-initialise
    for mod in (fresh,):
        _close(
            _kernel(mod).forward_and_log_det(x_other, context)[0],
            _kernel(module).forward_and_log_det(x_other, context)[0],
            0.0,
            "state_dict round trip",
        )
    buffer = io.BytesIO()
    torch.save(module, buffer)
    buffer.seek(0)
    whole = torch.load(buffer, weights_only=False)
    _close(_kernel(whole).forward_and_log_det(x, context)[0], y, 0.0, "torch.save round trip")


def check_input_dtypes(case: TransformCase, dtype=torch.float64) -> None:
    """Integer input, and floating input of another dtype than the layer's
    parameters, raise a ``TypeError`` that names the dtype it got."""
    module = instantiate(case, dtype)
    kernel = _kernel(module)
    x, context = sample_inputs(module, (3,), dtype)
    y, _ = sample_inputs(module, (3,), dtype, output=True)
    wrong = [torch.int64]
    if kernel.parameter_dtype() is not None:
        wrong += [d for d in (torch.float16, torch.bfloat16, torch.float32, torch.float64) if d != dtype]
    for bad in wrong:
        for call, value in ((kernel.forward_and_log_det, x), (kernel.inverse_and_log_det, y)):
            try:
                call(value.to(bad), context)
            except TypeError as err:
                if str(bad) not in str(err):
                    raise AssertionError(f"{bad} input: the error does not name the dtype: {err}") from err
            else:
                raise AssertionError(f"{bad} input to a {dtype} layer was accepted")


def check_empty_batch(case: TransformCase, dtype=torch.float64) -> None:
    """A batch of 0 rows gives 0 rows out (and 0 log-dets), both ways."""
    module = instantiate(case, dtype)
    kernel = _kernel(module)
    x, context = sample_inputs(module, (0,), dtype)
    y, log_det = kernel.forward_and_log_det(x, context)
    x_back, log_det_back = kernel.inverse_and_log_det(y, context)
    for name, value, shape in (
        ("y", y, (0, *kernel.output_shape)),
        ("x", x_back, x.shape),
        ("log_det", log_det, (0,)),
        ("inverse log_det", log_det_back, (0,)),
    ):
        if value.shape != torch.Size(shape):
            raise AssertionError(f"empty batch: {name} shape {tuple(value.shape)} != {tuple(shape)}")


CHECKS: dict[str, Callable[..., None]] = {
    "shapes": check_shapes,
    "inverse": check_inverse,
    "log_det": check_log_det,
    "cache": check_cache,
    "batch_independence": check_batch_independence,
    "gradients": check_gradients,
    "context": check_context,
    "identity_at_init": check_identity_at_init,
    "save_load": check_save_load,
    "input_dtypes": check_input_dtypes,
    "empty_batch": check_empty_batch,
}


def check_transform(case: TransformCase, dtype: torch.dtype = torch.float64) -> None:
    """Run every check of the contract; raises ``AssertionError`` on the first failure."""
    for name, check in CHECKS.items():
        try:
            check(case, dtype)
        except AssertionError as err:
            raise AssertionError(f"{case.name}: {name}: {err}") from err
