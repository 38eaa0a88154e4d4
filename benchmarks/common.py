"""Shared helpers for the benchmark scripts: timing, tables and JSON output."""

from __future__ import annotations

import json
import platform
import statistics
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).parent / "results"
# fit's fixed schedule: exactly num_steps steps at 8 particles, as the VI tables were measured
FIXED_SCHEDULE = {"stop": None, "num_particles": 8}


def alternated_ms_per_step(step_fns: dict, rounds: int = 5, steps: int = 30) -> dict[str, float]:
    """Median ms per call of each ``step_fns[name]()``, the functions alternated in
    rounds of ``steps`` calls so machine load hits all alike (round 0 warms up)."""
    times: dict[str, list[float]] = {name: [] for name in step_fns}
    for r in range(rounds + 1):
        for name, step in step_fns.items():
            start = time.perf_counter()
            for _ in range(steps):
                step()
            if r:
                times[name].append(1000 * (time.perf_counter() - start) / steps)
    return {name: statistics.median(t) for name, t in times.items()}


def train(model, data: torch.Tensor, steps: int, batch_size: int, lr: float, seed: int, warmup: int = 10) -> float:
    """Adam (the fused implementation, for every library) on the NLL with a
    seeded batch order; returns mean ms/step after ``warmup`` steps."""
    if model.optimizer is None:
        model.optimizer = torch.optim.Adam(model.module.parameters(), lr=lr, fused=True)
    opt = model.optimizer
    gen = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    for step in range(steps):
        if step == warmup:  # exclude warm-up from the timing
            start = time.perf_counter()
        batch = data[torch.randint(len(data), (batch_size,), generator=gen)]
        loss = -model.log_prob(batch).mean()
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite loss {loss.item()} at step {step}")
        opt.zero_grad()
        loss.backward()
        opt.step()
    return 1000 * (time.perf_counter() - start) / max(steps - warmup, 1)


@torch.no_grad()
def nll(model, data: torch.Tensor, batch_size: int = 5000) -> float:
    model.module.eval()
    total = sum(-model.log_prob(chunk).sum().item() for chunk in data.split(batch_size))
    model.module.train()
    return total / len(data)


def table(rows: list[dict], columns: list[str]) -> str:
    widths = {c: max(len(c), *(len(_fmt(r.get(c))) for r in rows)) for c in columns}
    lines = [" | ".join(c.ljust(widths[c]) for c in columns), "-|-".join("-" * widths[c] for c in columns)]
    lines += [" | ".join(_fmt(r.get(c)).ljust(widths[c]) for c in columns) for r in rows]
    return "\n".join(lines)


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 1e4 else f"{value:.3g}"
    return "" if value is None else str(value)


def save(name: str, payload: dict) -> Path:
    RESULTS.mkdir(exist_ok=True)
    payload = {
        "machine": {
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "cpu": platform.processor() or platform.machine(),
        },
        **payload,
    }
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2))
    return path
