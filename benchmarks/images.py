"""Image flows on scikit-learn's digits (8x8, 17 levels): pyroflows Glow and
multi-scale RealNVP against normflows' multi-scale Glow, at equal size and budget.

Every model sees the same pixels, batch order and dequantisation noise, the
same logit preprocessing (its log-det counted) and the same training loop
(Adam, linear warm-up then linear decay, gradient clipping). Test bits/dim is
the dequantisation bound on the discrete pixels (one noise draw per image).

    python benchmarks/images.py --seeds 0 1 2             # bits/dim table
    python benchmarks/images.py --timing                  # seconds per epoch, alternated
    python benchmarks/images.py --combine a b --results c # one table from runs made apart
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time

import torch
from common import RESULTS, save, table

from pyroflows.images import ImageFlow, glow, realnvp_image
from pyroflows.images.data import load_digits_images
from pyroflows.images.train import save_image_grid
from pyroflows.training import warmup_polynomial
from pyroflows.transforms import Logit

SHAPE, LEVELS, ALPHA = (1, 8, 8), 17, 0.05
MODELS = ("pyroflows-glow", "pyroflows-glow-variational", "pyroflows-realnvp", "normflows-glow")


class NormflowsGlow(torch.nn.Module):
    """normflows' multi-scale Glow (its README recipe, unconditional) behind
    the same dequantisation and logit preprocessing as ImageFlow."""

    def __init__(self, scales: int, steps: int, hidden: int) -> None:
        super().__init__()
        import normflows as nf

        c, h = SHAPE[0], SHAPE[1]
        q0, flows, merges = [], [], []
        for i in range(scales):
            channels = c * 2 ** (scales + 1 - i)
            level = [nf.flows.GlowBlock(channels, hidden, split_mode="channel", scale=True) for _ in range(steps)]
            flows.append([*level, nf.flows.Squeeze()])
            if i > 0:
                merges.append(nf.flows.Merge())
                latent = (c * 2 ** (scales - i), h // 2 ** (scales - i), h // 2 ** (scales - i))
            else:
                latent = (c * 2 ** (scales + 1), h // 2**scales, h // 2**scales)
            q0.append(nf.distributions.DiagGaussian(latent))
        self.model = nf.MultiscaleFlow(q0, flows, merges)
        self.logit = Logit(SHAPE, ALPHA)

    def forward(self, x, noise):
        z, log_det = self.logit.inverse_and_log_det((x + noise) / LEVELS, validate=False)
        log_p = self.model.log_prob(z, None) - log_det - math.prod(SHAPE) * math.log(LEVELS)
        return -log_p / (math.prod(SHAPE) * math.log(2))


def build(name: str, args, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    if name == "normflows-glow":
        return NormflowsGlow(args.scales, args.steps, args.hidden)
    if name == "pyroflows-realnvp":
        flow = realnvp_image(SHAPE, args.scales, args.hidden, num_blocks=1)
    else:
        flow = glow(SHAPE, args.scales, args.steps, args.hidden, transform=args.transform, seed=seed)
    deq = "variational" if name.endswith("variational") else "uniform"
    return ImageFlow(flow, LEVELS, deq, "logit", ALPHA)


def noise_for(model, n, gen):
    if isinstance(model, ImageFlow):
        return model.draw_noise(n, gen)
    return torch.rand(n, *SHAPE, generator=gen)


def run(name, args, seed, train, test):
    model = build(name, args, seed)
    n_params = sum(p.numel() for p in model.parameters())
    spe = len(train) // args.batch_size
    total = args.epochs * spe
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_polynomial(s, total, args.warmup))
    order = lambda epoch: torch.randperm(len(train), generator=torch.Generator().manual_seed(seed * 7919 + epoch))  # noqa: E731
    with torch.no_grad():  # data-dependent init on the first batch
        model(train[order(0)[: args.batch_size]].float(), noise_for(model, args.batch_size, torch.Generator()))
    seconds = []
    for epoch in range(args.epochs):
        began, perm = time.perf_counter(), order(epoch)
        for k in range(spe):
            gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch * spe + k)
            x = train[perm[k * args.batch_size : (k + 1) * args.batch_size]].float()
            loss = model(x, noise_for(model, len(x), gen)).mean()
            opt.zero_grad()
            loss.backward()
            if not torch.isfinite(loss):
                raise FloatingPointError(f"{name}: non-finite loss at epoch {epoch}")
            torch.nn.utils.clip_grad_norm_(model.parameters(), 50.0)
            opt.step()
            sched.step()
        seconds.append(time.perf_counter() - began)
    with torch.no_grad():
        model.eval()
        gen = torch.Generator().manual_seed(10_000 + seed)
        bpd = model(test.float(), noise_for(model, len(test), gen)).mean().item()
    if name == "pyroflows-glow" and seed == args.seeds[0]:
        save_image_grid(model.sample(64, 0.8), RESULTS / "images_glow_samples.png", LEVELS)
    row = {"model": name, "seed": seed, "params": n_params, "test_bpd": bpd, "s_per_epoch": statistics.median(seconds)}
    print(row, flush=True)
    return row


def timing(args, train):
    """Seconds per epoch (from ms/step), the loops alternated in rounds."""
    models = {name: build(name, args, 0) for name in ("pyroflows-glow", "normflows-glow")}
    spe = len(train) // args.batch_size
    opts = {name: torch.optim.Adam(m.parameters(), lr=1e-4) for name, m in models.items()}
    times = {name: [] for name in models}
    gen = torch.Generator().manual_seed(0)
    for round_ in range(args.rounds + 1):
        for name, model in models.items():
            start = time.perf_counter()
            for _ in range(args.timing_steps):
                x = train[torch.randint(len(train), (args.batch_size,), generator=gen)].float()
                loss = model(x, noise_for(model, len(x), gen)).mean()
                opts[name].zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 50.0)
                opts[name].step()
            if round_:  # the first round warms up
                times[name].append((time.perf_counter() - start) / args.timing_steps * spe)
    rows = [{"model": name, "s_per_epoch": statistics.median(t)} for name, t in times.items()]
    fastest_peer = rows[1]["s_per_epoch"]
    for row in rows:
        row["ratio_to_normflows"] = row["s_per_epoch"] / fastest_peer
    return rows


def summarize(rows):
    out = []
    for name in MODELS:
        mine = [r for r in rows if r["model"] == name]
        if not mine:
            continue
        bpd = [r["test_bpd"] for r in mine]
        sem = statistics.stdev(bpd) / math.sqrt(len(bpd)) if len(bpd) > 1 else float("nan")
        out.append(
            {
                "model": name,
                "seeds": len(mine),
                "params": mine[0]["params"],
                "test_bpd": statistics.mean(bpd),
                "sem": sem,
                "s_per_epoch": statistics.median(r["s_per_epoch"] for r in mine),
            }
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--scales", type=int, default=2)
    parser.add_argument("--steps", type=int, default=8, help="Glow steps per scale")
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument(
        "--transform", default="affine-sigmoid", help="pyroflows Glow coupling: affine or affine-sigmoid"
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--timing", action="store_true")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--timing-steps", type=int, default=20)
    parser.add_argument(
        "--results", default=None, help="JSON name under results/ (default: images, or images_timing with --timing)"
    )
    parser.add_argument("--combine", nargs="+", default=[])
    args = parser.parse_args()
    args.results = args.results or ("images_timing" if args.timing else "images")
    torch.set_num_threads(args.threads)
    train = load_digits_images("train").images
    test = load_digits_images("test").images
    if args.timing:
        rows = timing(args, train)
        print(table(rows, ["model", "s_per_epoch", "ratio_to_normflows"]))
        save(args.results, {"config": vars(args), "rows": rows})
        return
    if args.combine:
        rows = [row for name in args.combine for row in json.loads((RESULTS / f"{name}.json").read_text())["rows"]]
    else:
        rows = [run(name, args, seed, train, test) for seed in args.seeds for name in args.models]
    summary = summarize(rows)
    print(table(summary, ["model", "seeds", "params", "test_bpd", "sem", "s_per_epoch"]))
    save(args.results, {"config": vars(args), "rows": rows, "summary": summary})


if __name__ == "__main__":
    main()
