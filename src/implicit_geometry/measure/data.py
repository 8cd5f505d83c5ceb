"""Data sets with no network access, and class-imbalanced subsets of any of them.

* ``digits``: scikit-learn's bundled 8 x 8 digits (1,797 images, 10 classes).
* ``mnist1d``: MNIST-1D generated locally with ``mnist1d.data.make_dataset`` (never its download path).
* ``fashion-mnist``: the IDX files of Debian's ``dataset-fashion-mnist`` package (``/usr/share/datasets/fashion-mnist``;
  ``apt-get install -y dataset-fashion-mnist``), or ``--data-dir`` pointing at any MNIST/Fashion-MNIST IDX folder.
* ``idx:FOLDER`` and ``cifar10:FOLDER``: any folder with MNIST-style IDX files (optionally gzipped) or the CIFAR-10
  python batches (``data_batch_1..5``, ``test_batch``).

Every loader returns a :class:`Data` (float32 inputs N x C x H x W or N x D, scaled to [0, 1] and standardized
per channel, int64 labels).

>>> d = load("digits")
>>> d.x.shape, d.num_classes
(torch.Size([1797, 1, 8, 8]), 10)
>>> sub = d.subset(imbalanced_indices(d.y, profile="step", ratio=10, minority_fraction=0.5, n_max=100))
>>> sub.counts().tolist()
[100, 100, 100, 100, 100, 10, 10, 10, 10, 10]
"""

from __future__ import annotations

import gzip
import pickle
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from implicit_geometry._validation import InvalidParameterError, check_choice, check_float, check_int

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
DATASETS = ("digits", "mnist1d", "fashion-mnist", "idx:FOLDER", "cifar10:FOLDER")


@dataclass
class Data:
    x: torch.Tensor
    y: torch.Tensor
    name: str
    classes: int | None = None  # fixed by the data set (10 for CIFAR-10), else 1 + the largest label

    @property
    def num_classes(self) -> int:
        return self.classes if self.classes is not None else int(self.y.max()) + 1

    @property
    def in_shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape[1:])

    def counts(self) -> np.ndarray:
        return np.bincount(self.y.numpy(), minlength=self.num_classes)

    def subset(self, idx: np.ndarray | torch.Tensor) -> Data:
        idx = torch.as_tensor(np.asarray(idx), dtype=torch.long)
        return Data(self.x[idx], self.y[idx], self.name, self.classes)

    def loader(self, batch_size: int = 256) -> TensorBatches:
        """Batches ``(x, y)`` in order (slices, no per-row indexing: much faster than a DataLoader here)."""
        return TensorBatches(self.x, self.y, batch_size)


class TensorBatches:
    """A re-iterable sequence of ``(x[i:i+B], y[i:i+B])`` slices, usable wherever a DataLoader is."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int = 256) -> None:
        self.x, self.y, self.batch_size = x, y, check_int("batch_size", batch_size, minimum=1)

    def __len__(self) -> int:
        return (self.x.shape[0] + self.batch_size - 1) // self.batch_size

    def __iter__(self):
        for i in range(0, self.x.shape[0], self.batch_size):
            yield self.x[i : i + self.batch_size], self.y[i : i + self.batch_size]


def _standardize(x: np.ndarray) -> torch.Tensor:
    x = torch.as_tensor(x, dtype=torch.float32)
    axes = [0] + list(range(2, x.ndim)) if x.ndim > 2 else [0]
    mean = x.mean(dim=axes, keepdim=True)
    std = x.std(dim=axes, keepdim=True).clamp_min(1e-6)
    if x.ndim == 2:  # tabular: one mean/std for all features (keeps the relative scale of pixels)
        mean, std = x.mean(), x.std().clamp_min(1e-6)
    return (x - mean) / std


def load_digits() -> Data:
    from sklearn.datasets import load_digits as _ld

    d = _ld()
    return Data(_standardize(d.images[:, None] / 16.0), torch.as_tensor(d.target, dtype=torch.long), "digits")


def load_mnist1d(num_samples: int = 5000, seed: int = 42) -> Data:
    """MNIST-1D generated locally (training and test splits joined; 40 features, 10 classes)."""
    try:
        from mnist1d.data import get_dataset_args, make_dataset
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise InvalidParameterError("data must be installed: mnist1d needs `pip install mnist1d` (got ImportError)") from exc
    args = get_dataset_args()
    args.num_samples = check_int("num_samples", num_samples, minimum=20)
    args.seed = int(seed)
    d = make_dataset(args)
    x = np.concatenate([d["x"], d["x_test"]])
    y = np.concatenate([d["y"], d["y_test"]])
    return Data(_standardize(x), torch.as_tensor(y, dtype=torch.long), "mnist1d")


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        raw = fh.read()
    zero, dtype, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype != 0x08:
        raise InvalidParameterError(f"IDX files must hold unsigned bytes (got type 0x{dtype:02x} in {str(path)!r})")
    shape = struct.unpack(">" + "I" * ndim, raw[4 : 4 + 4 * ndim])
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def _find(folder: Path, stem: str) -> Path:
    for cand in (folder / stem, folder / f"{stem}.gz", folder / stem.replace("-idx", ".idx"), folder / f"{stem.replace('-idx', '.idx')}.gz"):
        if cand.is_file():
            return cand
    raise InvalidParameterError(f"data folder must hold {stem}[.gz] (got {str(folder)!r} without it)")


def load_idx(folder: Path | str, split: str = "train", name: str = "idx") -> Data:
    """MNIST or Fashion-MNIST IDX files (``train-images-idx3-ubyte[.gz]`` etc.) from ``folder``."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InvalidParameterError(f"data folder must exist (got {str(folder)!r})")
    prefix = {"train": "train", "test": "t10k"}[check_choice("split", split, ["train", "test"])]
    x = _read_idx(_find(folder, f"{prefix}-images-idx3-ubyte"))
    y = _read_idx(_find(folder, f"{prefix}-labels-idx1-ubyte"))
    return Data(_standardize(x[:, None] / 255.0), torch.as_tensor(y.astype(np.int64)), name)


def load_fashion_mnist(split: str = "train", folder: Path | str | None = None) -> Data:
    folder = Path(folder) if folder is not None else FASHION_MNIST_DIR
    if not folder.is_dir():
        raise InvalidParameterError(
            f"fashion-mnist must be installed: `apt-get install -y dataset-fashion-mnist` puts it in {FASHION_MNIST_DIR} "
            f"(got no folder {str(folder)!r}); or use --dataset digits / mnist1d"
        )
    return load_idx(folder, split, "fashion-mnist")


def load_cifar10(folder: Path | str, split: str = "train") -> Data:
    """CIFAR-10 python batches (``data_batch_1..5`` / ``test_batch``) from ``folder``."""
    folder = Path(folder)
    names = [f"data_batch_{i}" for i in range(1, 6)] if check_choice("split", split, ["train", "test"]) == "train" else ["test_batch"]
    xs, ys = [], []
    for n in names:
        p = folder / n
        if not p.is_file():
            raise InvalidParameterError(f"data folder must hold the CIFAR-10 python batch {n} (got {str(folder)!r} without it)")
        with open(p, "rb") as fh:
            batch = pickle.load(fh, encoding="bytes")
        xs.append(np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        ys.append(np.asarray(batch[b"labels"], dtype=np.int64))
    return Data(_standardize(np.concatenate(xs) / 255.0), torch.as_tensor(np.concatenate(ys)), "cifar10", 10)


BUNDLED = ("digits", "mnist1d", "fashion-mnist")


def check_dataset(name: str) -> str:
    """A data set name :func:`load` takes: a bundled one, or ``idx:FOLDER`` / ``cifar10:FOLDER``."""
    if not (isinstance(name, str) and (name in BUNDLED or name.startswith(("idx:", "cifar10:")))):
        check_choice("dataset", name, [*BUNDLED, "idx:FOLDER", "cifar10:FOLDER"])
    return name


def load(name: str, *, split: str = "train", data_dir: str | None = None, mnist1d_samples: int = 5000, seed: int = 0) -> Data:
    """A data set by name (see the module docstring); ``idx:FOLDER`` / ``cifar10:FOLDER`` name a folder."""
    check_dataset(name)
    if name.startswith("idx:"):
        return load_idx(name[4:], split)
    if name.startswith("cifar10:"):
        return load_cifar10(name[8:], split)
    if name in ("digits", "mnist1d") and split != "train":
        raise InvalidParameterError(f"split must be train for {name} (it has one split; got {split!r})")
    if name == "digits":
        return load_digits()
    if name == "mnist1d":
        return load_mnist1d(mnist1d_samples, seed=42 + seed)
    return load_fashion_mnist(split, data_dir)


def profile_counts(num_classes: int, n_max: int, *, profile: str = "step", ratio: float = 10.0, minority_fraction: float = 0.5) -> np.ndarray:
    """Class counts of an imbalance profile, majorities first: ``none`` (all ``n_max``), ``step`` (a fraction
    ``minority_fraction`` of minority classes with ``n_max / ratio``) or ``exp`` (``n_max * ratio^(-c/(K-1))``).

    >>> profile_counts(5, 100, profile="exp", ratio=100).tolist()
    [100, 32, 10, 3, 1]
    """
    K = check_int("classes", num_classes, minimum=2)
    n_max = check_int("n_max", n_max, minimum=1)
    profile = check_choice("profile", profile, ["none", "step", "exp"])
    ratio = check_float("ratio", ratio, minimum=1.0)
    if profile == "none":
        return np.full(K, n_max, dtype=np.int64)
    if profile == "step":
        rho = check_float("minority_fraction", minority_fraction, minimum=0.0, maximum=1.0)
        k_min = int(round(rho * K))
        return np.array([n_max] * (K - k_min) + [max(1, int(round(n_max / ratio)))] * k_min, dtype=np.int64)
    return np.maximum(1, np.round(n_max * ratio ** (-np.arange(K) / (K - 1)))).astype(np.int64)


def imbalanced_indices(labels: torch.Tensor | np.ndarray, *, profile: str = "step", ratio: float = 10.0, minority_fraction: float = 0.5,
                       n_max: int | None = None, seed: int = 0) -> np.ndarray:
    """Row indices of a subset whose class counts follow :func:`profile_counts` (``n_max`` defaults to the
    smallest class size; rows drawn at random without replacement, sorted)."""
    y = np.asarray(labels)
    K = int(y.max()) + 1
    avail = np.bincount(y, minlength=K)
    n_max = int(avail.min()) if n_max is None else check_int("n_max", n_max, minimum=1)
    want = profile_counts(K, n_max, profile=profile, ratio=ratio, minority_fraction=minority_fraction)
    if np.any(want > avail):
        raise InvalidParameterError(f"n_max must be at most the smallest class size {int(avail.min())} (got {n_max})")
    rng = np.random.default_rng(seed)
    idx = [rng.choice(np.flatnonzero(y == c), size=int(want[c]), replace=False) for c in range(K)]
    return np.sort(np.concatenate(idx))
