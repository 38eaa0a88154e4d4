"""Image data as integer pixel tensors ``(N, C, H, W)`` with their number of levels.

scikit-learn's digits ship with scikit-learn (no download). MNIST,
Fashion-MNIST and CIFAR-10 are read from the files torchvision's loaders
download, in torchvision's folder layout (``root/MNIST/raw``,
``root/FashionMNIST/raw``, ``root/cifar-10-batches-py``); ``download=True``
fetches them with torchvision first (needs internet).
"""

from __future__ import annotations

import gzip
import pickle
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

__all__ = ["ImageData", "load_cifar10", "load_digits_images", "load_mnist"]


class ImageData(NamedTuple):
    """Pixels (int64, ``(N, C, H, W)``), their number of levels, and labels."""

    images: torch.Tensor
    num_levels: int
    labels: torch.Tensor


def load_digits_images(split: str = "train", test_fraction: float = 0.2, seed: int = 0) -> ImageData:
    """scikit-learn's 8x8 digits (17 grey levels, 0..16), split at random into
    train and test with ``seed``. Needs scikit-learn (in the ``dev`` extra).

    Examples:
        >>> data = load_digits_images("test")
        >>> data.images.shape, data.num_levels
        (torch.Size([359, 1, 8, 8]), 17)
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    try:
        from sklearn.datasets import load_digits
    except ImportError as error:
        raise ImportError("load_digits_images needs scikit-learn: pip install scikit-learn") from error
    digits = load_digits()
    images = torch.as_tensor(digits.images, dtype=torch.int64)[:, None]
    labels = torch.as_tensor(digits.target)
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))
    n_test = int(round(test_fraction * len(images)))
    index = order[n_test:] if split == "train" else order[:n_test]
    return ImageData(images[index], 17, labels[index])


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise ValueError(f"{path} is not an IDX file of unsigned bytes")
    ndim = data[3]
    dims = np.frombuffer(data, dtype=">i4", count=ndim, offset=4)
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def _find(folder: Path, name: str) -> Path:
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.exists():
            return candidate
    raise FileNotFoundError(f"{folder / name}(.gz) not found: pass download=True (needs internet and torchvision)")


def _download(kind: str, root: Path, train: bool) -> None:
    try:
        import torchvision.datasets as tvd
    except ImportError as error:
        raise ImportError("download=True needs torchvision: pip install torchvision") from error
    getattr(tvd, kind)(str(root), train=train, download=True)


def load_mnist(root: str | Path, split: str = "train", fashion: bool = False, download: bool = False) -> ImageData:
    """MNIST (or Fashion-MNIST) from torchvision's files under ``root``:
    ``(N, 1, 28, 28)`` pixels with 256 levels."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    kind = "FashionMNIST" if fashion else "MNIST"
    root = Path(root)
    if download:
        _download(kind, root, split == "train")
    prefix = "train" if split == "train" else "t10k"
    folder = root / kind / "raw"
    images = _read_idx(_find(folder, f"{prefix}-images-idx3-ubyte"))
    labels = _read_idx(_find(folder, f"{prefix}-labels-idx1-ubyte"))
    if images.ndim != 3 or len(images) != len(labels):
        raise ValueError(f"{folder}: expected N images of H x W and N labels, got {images.shape} and {labels.shape}")
    return ImageData(torch.as_tensor(images.astype(np.int64))[:, None], 256, torch.as_tensor(labels.astype(np.int64)))


def load_cifar10(root: str | Path, split: str = "train", download: bool = False) -> ImageData:
    """CIFAR-10 from torchvision's files under ``root``: ``(N, 3, 32, 32)`` pixels with 256 levels."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    root = Path(root)
    if download:
        _download("CIFAR10", root, split == "train")
    folder = root / "cifar-10-batches-py"
    names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    images, labels = [], []
    for name in names:
        path = folder / name
        if not path.exists():
            raise FileNotFoundError(f"{path} not found: pass download=True (needs internet and torchvision)")
        with open(path, "rb") as f:
            batch = pickle.load(f, encoding="latin1")
        images.append(np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        labels.append(np.asarray(batch["labels"], dtype=np.int64))
    return ImageData(
        torch.as_tensor(np.concatenate(images).astype(np.int64)), 256, torch.as_tensor(np.concatenate(labels))
    )
