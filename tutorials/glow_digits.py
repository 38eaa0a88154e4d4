"""Tutorial: train a Glow on digits from scratch.

A multi-scale Glow on scikit-learn's 8x8 digits (17 grey levels, no download)
with logit preprocessing and uniform or variational dequantisation. Prints
test bits/dim (an upper bound on the code length of the discrete pixels) and
writes a grid of samples and the bits/dim curve::

    python tutorials/glow_digits.py --epochs 60 --out glow_digits

MNIST, Fashion-MNIST or CIFAR-10 instead (torchvision downloads them; a GPU
helps)::

    python tutorials/glow_digits.py --dataset mnist --root data --download --epochs 10 --scales 3 --hidden 256

On several processes or GPUs, the same script under torchrun::

    torchrun --nproc_per_node 2 tutorials/glow_digits.py --epochs 60
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from pyroflows.images import ImageFlow, glow  # noqa: E402
from pyroflows.images.data import load_cifar10, load_digits_images, load_mnist  # noqa: E402
from pyroflows.images.train import setup_distributed, train_images  # noqa: E402


def load(args, split):
    if args.dataset == "digits":
        return load_digits_images(split)
    if args.dataset == "cifar10":
        return load_cifar10(args.root, split, download=args.download)
    return load_mnist(args.root, split, fashion=args.dataset == "fashion-mnist", download=args.download)


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="digits", choices=["digits", "mnist", "fashion-mnist", "cifar10"])
    parser.add_argument("--root", default="data", help="torchvision's data folder (MNIST, CIFAR-10)")
    parser.add_argument("--download", action="store_true")
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--scales", type=int, default=2)
    parser.add_argument("--steps", type=int, default=8, help="Glow steps per scale")
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--dequantization", default="uniform", choices=["uniform", "variational"])
    parser.add_argument("--pad", type=int, default=None, help="zero-pad images to a multiple of 2^scales")
    parser.add_argument("--out", default="glow_digits", help="folder for samples.png, bpd.png, checkpoint.pt")
    args = parser.parse_args(argv)

    rank, _ = setup_distributed()
    device = torch.device("cuda", rank % torch.cuda.device_count()) if torch.cuda.is_available() else None
    train_data, test_data = load(args, "train"), load(args, "test")
    images, test_images = train_data.images, test_data.images
    size = 2**args.scales
    pad = args.pad if args.pad is not None else (-images.shape[-1]) % size  # 28x28 MNIST -> 32x32
    if pad:
        images = torch.nn.functional.pad(images, (pad // 2, pad - pad // 2) * 2)
        test_images = torch.nn.functional.pad(test_images, (pad // 2, pad - pad // 2) * 2)
    torch.manual_seed(0)
    flow = glow(tuple(images.shape[1:]), args.scales, args.steps, args.hidden, seed=0)
    model = ImageFlow(flow, train_data.num_levels, args.dequantization).to(device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    history = train_images(
        model,
        images,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        test_data=test_images[:2000],
        eval_every=max(1, args.epochs // 10),
        samples=out / "samples.png",
        checkpoint=out / "checkpoint.pt",
    )
    results = {
        "test bits/dim": history.test_bpd[-1],
        "seconds/epoch": sum(history.epoch_seconds) / len(history.epoch_seconds),
        "reconstruction error": history.reconstruction_error[-1],
    }
    if rank == 0:
        fig, ax = plt.subplots(figsize=(5, 3.5))
        steps_per_epoch = len(history.train_bpd) / len(history.epoch_seconds)
        ax.plot([s / steps_per_epoch for s in range(len(history.train_bpd))], history.train_bpd, lw=0.6, label="train")
        ax.plot(history.eval_epochs, history.test_bpd, "o-", label="test")
        ax.set(xlabel="epoch", ylabel="bits/dim", title=f"Glow on {args.dataset}")
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / "bpd.png", dpi=100)
        for name, value in results.items():
            print(f"{name}: {value:.4g}")
    return results


if __name__ == "__main__":
    main()
