"""Discrete flow matching on a Markov source with an exact likelihood, and on digits.

Markov task: an order-2 chain over 20 symbols (transition rows Dirichlet(--concentration),
0.3 by default: entropy rate 2.06 nats against log 20 = 3.00; at 0.1 over 40% of the
transitions have probability below 1e-4, so the per-token NLL of samples measures single
rare errors more than fit), seed 0, sequences of 32 tokens, 100k training and 2k test
sequences. Models share one backbone (``SequenceTransformer``: --dim, --depth, 4 heads)
and the same wall-time budget (--seconds of training each, Adam --lr, batch 128).
With --pairs every model also gets three neighbour-pair tables (``pairs=`` of
``SequenceTransformer``; --pair-logit-scale), so the sizes stay equal. --self-condition
lets the flow-matching models read their own beliefs (``self_condition=`` of
``DiscreteFlowMatcher``) and --decay decays every model's learning rate (cosine) over its budget:

- masked-source and uniform-source discrete flow matching (linear kappa);
- an autoregressive transformer (the honest baseline: exact NLL);
- ``oracle``: the masked-source sampler driven by the source's exact posterior
  (``ExactMarkovDenoiser``, no training): the floor the sampler itself sets at each
  step count, from drawing positions that unmask in the same step independently.

Reported: test ELBO (DFM) / test NLL (AR) in nats per token (with --iw-samples K also the
masked model's importance-weighted bound over K unmasking-time draws); for 8..128 sampling steps the
true-source NLL per token of 2k samples against the source's exact entropy per token,
bigram total variation against the test set, and the sampling time.

Digits task (--digits): a masked-source model with ``ConvNet8`` on 64-token digits over
17 levels; test ELBO in nats per token (and bits per pixel) and a sample grid PNG.

    python benchmarks/discrete.py --models mask ar --results discrete_mask_ar
    python benchmarks/discrete.py --models uniform --digits --results discrete_uniform_digits
    python benchmarks/discrete.py --combine discrete_mask_ar discrete_uniform_digits --results discrete
    python benchmarks/discrete.py --models oracle --results discrete_oracle   # the sampler's floor
    python benchmarks/discrete.py --models mask --pairs --results discrete_pairs_mask    # with pair tables
    python benchmarks/discrete.py --seconds 20 --models mask --sample-steps 8   # smoke run
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
from common import RESULTS, save, table

from pyroflows.discrete import (
    AutoregressiveModel,
    DiscreteFlowMatcher,
    ExactMarkovDenoiser,
    MarkovSource,
    MixturePath,
    digits_tokens,
    ngram_distance,
    train_discrete,
)
from pyroflows.discrete.sampling import DETERMINISTIC_ORDERS, ORDERS
from pyroflows.nn.tokens import ConvNet8, SequenceTransformer

LENGTH, VOCAB = 32, 20
# --pairs: three pair-embedding tables each, so the models keep one size. The flow-matching
# denoiser reads an order-2 chain's three transition terms around a position; the
# autoregressive model (inputs shifted by one) reads (x[i-2], x[i-1]) and two further pairs.
BIDIRECTIONAL_PAIRS = ((-2, -1), (-1, 1), (1, 2))
CAUSAL_PAIRS = ((-1, 0), (-2, -1), (-2, 0))


def build(name: str, args, source: MarkovSource) -> torch.nn.Module:
    if name == "oracle":
        return DiscreteFlowMatcher(ExactMarkovDenoiser(source, LENGTH), MixturePath(VOCAB, "mask"), LENGTH)
    if name == "ar":
        pairs = CAUSAL_PAIRS if args.pairs else ()
        model = AutoregressiveModel(VOCAB, LENGTH, dim=args.dim, depth=args.depth, heads=4, pairs=pairs)
        model.net.pair_logit_scale = args.pair_logit_scale
        return model
    path = MixturePath(VOCAB, name)
    pairs = BIDIRECTIONAL_PAIRS if args.pairs else ()
    sizes = {"dim": args.dim, "depth": args.depth, "heads": 4}
    net = SequenceTransformer(
        path.input_vocab_size, LENGTH, VOCAB, **sizes, pairs=pairs, self_condition=args.self_condition
    )
    net.pair_logit_scale = args.pair_logit_scale
    return DiscreteFlowMatcher(net, path, LENGTH, self_condition=args.self_condition)


def markov_rows(name: str, source: MarkovSource, data, test, args) -> list[dict]:
    torch.manual_seed(args.seed)
    model = build(name, args, source)
    loss = "nll" if name == "ar" else args.loss
    start = time.perf_counter()
    options = {"batch_size": 128, "lr": args.lr, "max_seconds": args.seconds, "progress": False, "ema": args.ema}
    options["decay"] = args.decay
    losses = [] if name == "oracle" else train_discrete(model, data, 10**9, loss=loss, seed=args.seed, **options)
    seconds = time.perf_counter() - start
    model.eval()
    iw_bound = None
    with torch.no_grad():
        if name == "ar":
            bound = -model.log_prob(test).mean().item() / LENGTH
        else:
            bound = model.elbo(test, num_times=args.elbo_times).mean().item() / LENGTH
            if name == "mask" and args.iw_samples:
                gen = torch.Generator().manual_seed(args.seed)
                iw_bound = model.iw_bound(test, args.iw_samples, generator=gen).mean().item() / LENGTH
    truth = source.entropy_per_token(LENGTH)
    base = {
        "task": "markov",
        "model": name,
        "params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "train_steps": len(losses),
        "train_seconds": seconds,
        "test_bound_per_token": bound,
        "true_entropy_per_token": truth,
    }
    if name == "mask" and args.iw_samples:
        base.update(iw_samples=args.iw_samples, test_iw_bound_per_token=iw_bound)
    if name == "mask" and args.trajectory:
        base["trajectory"] = trajectory_terms(model, source)
        print("along the sampler's path, per token:", base["trajectory"], flush=True)
    if name == "mask" and args.posterior_kl:
        base["posterior_kl"] = posterior_kl(model, source, test)
        print("posterior KL(model || exact) per masked token:", base["posterior_kl"], flush=True)
    rows = []
    settings = [(None, None, None)] if name == "ar" else [(steps, None, None) for steps in args.sample_steps]
    if name != "ar" and args.top_p is not None:
        settings += [(steps, args.top_p, None) for steps in args.sample_steps]
    if name in ("mask", "oracle"):
        settings += [(steps, None, order) for order in args.orders for steps in args.sample_steps]
    for steps, top_p, order in settings:
        gen = torch.Generator().manual_seed(args.seed + 1)
        start = time.perf_counter()
        extra = {}
        if name == "ar":
            x = model.sample(args.num_samples, generator=gen)
        else:
            x = model.sample(args.num_samples, steps=steps, top_p=top_p, order=order, generator=gen)
        sample_seconds = time.perf_counter() - start
        log_p = source.log_prob(x)
        if order in DETERMINISTIC_ORDERS:  # the sampler's exact likelihood, on its draws and on test data
            log_q = model.ordered_log_prob(x, steps, order)
            extra = {"sample_entropy_per_token": -log_q.mean().item() / LENGTH}
            extra["sample_kl_per_token"] = (log_q - log_p).mean().item() / LENGTH
            extra["ordered_test_nll_per_token"] = -model.ordered_log_prob(test, steps, order).mean().item() / LENGTH
        nll = -log_p.mean().item() / LENGTH
        rows.append(
            {
                **base,
                "sample_steps": steps if steps is not None else LENGTH,
                "top_p": top_p,
                "order": order,
                "sample_nll_per_token": nll,
                "sample_nll_over_entropy": nll / truth,
                "bigram_tv": ngram_distance(x, test, 2, VOCAB),
                **extra,
                "sample_seconds": sample_seconds,
            }
        )
        print(rows[-1], flush=True)
    return rows


@torch.no_grad()
def posterior_kl(model, source: MarkovSource, test: torch.Tensor, times=(0.1, 0.3, 0.5, 0.7, 0.9, 0.97)) -> dict:
    """KL(model || exact posterior) per masked token of test sequences masked at level ``t``: over all
    masked positions, those whose two neighbours on each side are visible, and the rest."""
    exact, gen, out = ExactMarkovDenoiser(source, LENGTH), torch.Generator().manual_seed(5), {}
    for t in times:
        masked = torch.rand(test.shape, generator=gen) > t  # linear kappa: visible with probability t
        x_t = torch.where(masked, VOCAB, test)
        p = exact(x_t).double()
        q = model.logits(x_t, torch.full((len(x_t),), t)).log_softmax(-1).double()
        kl = (q.exp() * (q - p)).sum(-1)
        hidden = torch.nn.functional.pad(masked, (2, 2))  # off the ends counts as visible
        near = hidden[:, :-4] | hidden[:, 1:-3] | hidden[:, 3:-1] | hidden[:, 4:]
        groups = {"all": masked, "neighbours_visible": masked & ~near, "neighbour_masked": masked & near}
        out[str(t)] = {k: kl[m].mean().item() if m.any() else None for k, m in groups.items()}
    return out


class _Recorder(torch.nn.Module):
    """Wraps a network and keeps every call's input and log-posterior."""

    def __init__(self, net) -> None:
        super().__init__()
        self.net, self.calls = net, []

    def forward(self, x_t, t, *beliefs):
        out = self.net(x_t, t, *beliefs)
        self.calls.append((x_t.clone(), out.log_softmax(-1)))
        return out


@torch.no_grad()
def trajectory_terms(model, source: MarkovSource, num: int = 1000, steps: int = 64) -> dict:
    """Per token of masked-model samples: for each drawn token, at the step that drew it, the true
    source's NLL of the draw (``cross_entropy``), the model's and the exact posterior's entropies and
    their KL. Summed over a sequence the cross-entropy is the samples' true NLL when one position
    moves per step; ``exact_entropy`` above the entropy rate measures contexts the model led astray."""
    exact, net = ExactMarkovDenoiser(source, LENGTH), model.net
    model.net = recorder = _Recorder(net)
    try:
        final = model.sample(num, steps=steps, generator=torch.Generator().manual_seed(1))
    finally:
        model.net = net
    calls = recorder.calls  # one call per step
    totals = dict.fromkeys(("cross_entropy", "model_entropy", "exact_entropy", "kl"), 0.0)
    for k, (x_t, q) in enumerate(calls):
        after = calls[k + 1][0] if k + 1 < len(calls) else final
        moved = (x_t == VOCAB) & (after != VOCAB)
        q, p = q[moved].double(), exact(x_t)[moved].double()
        totals["cross_entropy"] -= (q.exp() * p).sum().item()
        totals["model_entropy"] -= (q.exp() * q).sum().item()
        totals["exact_entropy"] -= (p.exp() * p).sum().item()
        totals["kl"] += (q.exp() * (q - p)).sum().item()
    out = {key: value / final.numel() for key, value in totals.items()}
    out["sample_nll"] = -source.log_prob(final).mean().item() / LENGTH
    return out


def digits_row(args) -> dict:
    torch.manual_seed(args.seed)
    tokens, _ = digits_tokens()
    order = torch.randperm(len(tokens), generator=torch.Generator().manual_seed(0))
    train_x, test_x = tokens[order[:1500]], tokens[order[1500:]]
    path = MixturePath(17, "mask")
    model = DiscreteFlowMatcher(ConvNet8(path.input_vocab_size, 17, width=32), path, 64)
    options = {"batch_size": 128, "lr": args.lr, "max_seconds": args.seconds, "progress": False}
    losses = train_discrete(model, train_x, 10**9, loss=args.loss, seed=0, **options)
    model.eval()
    elbo = model.elbo(test_x, num_times=args.elbo_times).mean().item() / 64
    samples = model.sample(64, steps=64, generator=torch.Generator().manual_seed(1))
    png = save_grid(samples, RESULTS / "discrete_digits_samples.png")
    ordered = model.sample(64, steps=64, order="entropy", generator=torch.Generator().manual_seed(1))
    ordered_png = save_grid(ordered, RESULTS / "discrete_digits_samples_entropy_order.png")
    ordered_nll = -model.ordered_log_prob(test_x, 64, "entropy").mean().item() / 64  # exact, not a bound
    return {
        "task": "digits",
        "model": "mask",
        "params": sum(p.numel() for p in model.parameters()),
        "train_steps": len(losses),
        "test_bound_per_token": elbo,
        "test_bits_per_pixel": elbo / math.log(2),
        "grid": str(png.name),
        "entropy_order_test_bits_per_pixel": ordered_nll / math.log(2),
        "entropy_order_grid": str(ordered_png.name),
    }


def save_grid(tokens: torch.Tensor, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(8, 8, figsize=(6, 6))
    for ax, image in zip(axes.flat, tokens, strict=False):
        ax.imshow(image.view(8, 8).numpy(), cmap="gray_r", vmin=0, vmax=16)
        ax.axis("off")
    fig.savefig(path, dpi=80, bbox_inches="tight")
    plt.close(fig)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    models = ["mask", "uniform", "ar", "oracle"]
    parser.add_argument("--models", nargs="*", default=models[:3], choices=models)
    parser.add_argument("--digits", action="store_true", help="also train_discrete the digits model")
    parser.add_argument("--seconds", type=float, default=420.0, help="training wall time per model")
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--depth", type=int, default=3)
    parser.add_argument("--loss", default="ce", choices=["ce", "kl"])
    parser.add_argument("--pairs", action="store_true", help="pair-embedding tables in every model's stem")
    parser.add_argument("--pair-logit-scale", type=float, default=10.0, help="multiplier of the pair logit tables")
    parser.add_argument("--self-condition", action="store_true", help="flow-matching models read their beliefs")
    parser.add_argument("--decay", action="store_true", help="cosine learning-rate decay over the budget (all models)")
    parser.add_argument("--concentration", type=float, default=0.3)
    parser.add_argument("--sample-steps", type=int, nargs="+", default=[8, 16, 32, 64, 128])
    parser.add_argument("--num-samples", type=int, default=2000)
    parser.add_argument("--top-p", type=float, default=None, help="also sample with this nucleus (top-p) cut")
    parser.add_argument("--orders", nargs="*", default=[], choices=ORDERS, help="masked model: also ordered unmasking")
    parser.add_argument("--elbo-times", type=int, default=32)
    parser.add_argument("--posterior-kl", action="store_true", help="masked model: KL to the exact posterior")
    parser.add_argument("--trajectory", action="store_true", help="masked model: KL and entropies along 64 steps")
    parser.add_argument("--iw-samples", type=int, default=0, help="also the importance-weighted bound (mask source)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ema", type=float, default=None, help="weight averaging decay for every model")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--results", default="discrete")
    parser.add_argument("--combine", nargs="+", default=[], help="results files to merge instead of running")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = [row for name in args.combine for row in json.loads((RESULTS / f"{name}.json").read_text())["rows"]]
    if not args.combine:
        source = MarkovSource(VOCAB, order=2, concentration=args.concentration, seed=0)
        data, test = source.sample(100_000, LENGTH, seed=1), source.sample(2_000, LENGTH, seed=2)
        for name in args.models:
            rows += markov_rows(name, source, data, test, args)
        if args.digits:
            rows.append(digits_row(args))
            print(rows[-1], flush=True)
    ar = next((r for r in rows if r["model"] == "ar"), None)
    for row in rows:
        if ar is not None and row["task"] == "markov":
            row["bound_over_ar_nll"] = row["test_bound_per_token"] / ar["test_bound_per_token"]
            if "test_iw_bound_per_token" in row:
                row["iw_bound_over_ar_nll"] = row["test_iw_bound_per_token"] / ar["test_bound_per_token"]
    markov = [r for r in rows if r["task"] == "markov"]
    columns = ["model", "params", "train_steps", "test_bound_per_token", "bound_over_ar_nll"]
    columns += ["test_iw_bound_per_token", "iw_bound_over_ar_nll", "sample_steps", "top_p", "order"]
    columns += ["sample_nll_per_token", "true_entropy_per_token", "sample_nll_over_entropy", "bigram_tv"]
    columns += ["sample_entropy_per_token", "sample_kl_per_token", "ordered_test_nll_per_token"]
    if markov:
        print(table(markov, [*columns, "sample_seconds"]))
    digits = [r for r in rows if r["task"] == "digits"]
    if digits:
        columns = ["model", "params", "train_steps", "test_bound_per_token", "test_bits_per_pixel", "grid"]
        print(table(digits, [*columns, "entropy_order_test_bits_per_pixel", "entropy_order_grid"]))
    print("wrote", save(args.results, {"args": vars(args), "rows": rows}))


if __name__ == "__main__":
    main()
