"""Dataset readers and the one prepared format every later stage reads.

Each on-disk format has a reader ``read(root) -> RawDataset``; a dataset name
maps to its reader in :data:`DATASETS`.  :func:`prepare` turns a raw dataset
into ``data.pt`` (see docs/INTERFACES.md): uint8 image tensors ``[N, C, H, W]``,
int64 labels, class names, and the per-channel mean and std of the training
images, plus ``classes.tsv`` with each class's WordNet 3.0 noun synset (from
``resources/{dataset}.tsv``).

Implemented: Fashion-MNIST (IDX files, plain or gzipped: Debian's
``dataset-fashion-mnist`` puts them in ``/usr/share/datasets/fashion-mnist``,
or torchvision's download).  CIFAR pickles, STL-10 binaries and image folders
plug in here the same way.
"""

from __future__ import annotations

import gzip
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

__all__ = [
    "RawDataset",
    "DATASETS",
    "read_idx",
    "read_fashion_mnist",
    "check_root",
    "balanced_subset",
    "prepare",
    "load_prepared",
    "class_map",
]

RESOURCES = Path(__file__).parent / "resources"


@dataclass
class RawDataset:
    train_images: np.ndarray  # uint8 [N, C, H, W]
    train_labels: np.ndarray  # int64 [N]
    test_images: np.ndarray
    test_labels: np.ndarray
    classes: list[str]


# ---------------------------------------------------------------- IDX (MNIST)

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read one IDX file (``.gz`` or plain) into an array of its stored shape.

    Raises ``ValueError`` naming the file when the magic number or the size
    does not match the header.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise ValueError(f"{path}: not an IDX file (bad magic number)")
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    ndim = raw[3]
    shape = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    body = raw[4 + 4 * ndim :]
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(body) != expected:
        raise ValueError(f"{path}: truncated or oversized IDX file ({len(body)} bytes of data, header says {expected})")
    return np.frombuffer(body, dtype=dtype).reshape(shape)


FASHION_MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


def _idx_path(root: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem):
        for sub in ("", "raw", "FashionMNIST/raw"):
            p = root / sub / name
            if p.exists():
                return p
    return None


def read_fashion_mnist(root: str | os.PathLike) -> RawDataset:
    root = Path(root)
    check_root("fashion-mnist", root)
    arrays = {k: read_idx(_idx_path(root, stem)) for k, stem in FASHION_MNIST_FILES.items()}
    for split in ("train", "test"):
        n_img, n_lab = len(arrays[f"{split}_images"]), len(arrays[f"{split}_labels"])
        if n_img != n_lab:
            raise ValueError(f"{root}: {split} split has {n_img} images but {n_lab} labels")
    return RawDataset(
        train_images=arrays["train_images"][:, None].copy(),
        train_labels=arrays["train_labels"].astype(np.int64),
        test_images=arrays["test_images"][:, None].copy(),
        test_labels=arrays["test_labels"].astype(np.int64),
        classes=list(FASHION_MNIST_CLASSES),
    )


def _download_fashion_mnist(root: Path) -> None:
    import torchvision

    for train in (True, False):
        torchvision.datasets.FashionMNIST(str(root), train=train, download=True)


# ------------------------------------------------------------------ registry

#: dataset name -> (reader, downloader or None)
DATASETS: dict[str, tuple[Callable[[Path], RawDataset], Callable[[Path], None] | None]] = {
    "fashion-mnist": (read_fashion_mnist, _download_fashion_mnist),
}

_EXPECTED = {"fashion-mnist": list(FASHION_MNIST_FILES.values())}


def check_root(name: str, root: str | os.PathLike) -> None:
    """Raise ``FileNotFoundError`` saying what is missing where, and how to get it."""
    if name not in DATASETS:
        raise KeyError(f"unknown dataset {name!r}; allowed: {', '.join(DATASETS)}")
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(
            f"data directory {root} for dataset {name!r} does not exist; "
            + _how_to_get(name)
        )
    missing = [stem for stem in _EXPECTED[name] if _idx_path(root, stem) is None]
    if missing:
        raise FileNotFoundError(
            f"data directory {root} for dataset {name!r} lacks {', '.join(s + '[.gz]' for s in missing)}; "
            + _how_to_get(name)
        )


def _how_to_get(name: str) -> str:
    if name == "fashion-mnist":
        return ("install Debian's dataset-fashion-mnist (files in /usr/share/datasets/fashion-mnist), "
                "or set datasets.fashion-mnist.download: true to fetch it with torchvision")
    return "see README.md"


def class_map(name: str) -> list[tuple[int, str, str]]:
    """``[(index, class name, WordNet synset)]`` from ``resources/{name}.tsv``."""
    rows = []
    path = RESOURCES / f"{name}.tsv"
    with open(path) as f:
        header = f.readline().rstrip("\n").split("\t")
        if header != ["index", "name", "synset"]:
            raise ValueError(f"{path}: expected header 'index\\tname\\tsynset'")
        for line in f:
            if line.strip():
                i, cls, syn = line.rstrip("\n").split("\t")
                rows.append((int(i), cls, syn))
    return rows


# ---------------------------------------------------------- prepared format

def balanced_subset(labels: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """Indices of a class-balanced subset of size ``n`` (all when ``n`` is 0
    or not smaller than the set), sorted, fixed by ``seed``.  Classes get
    ``n // C`` each and the remainder goes to the first classes."""
    if n <= 0 or n >= len(labels):
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    per, extra = divmod(n, len(classes))
    picks = []
    for j, c in enumerate(classes):
        members = np.flatnonzero(labels == c)
        want = per + (1 if j < extra else 0)
        if want > len(members):
            raise ValueError(f"class {c} has {len(members)} examples, fewer than the {want} a balanced subset of {n} needs")
        picks.append(rng.choice(members, size=want, replace=False))
    return np.sort(np.concatenate(picks))


def _atomic_save(obj, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def prepare(name: str, root: str | os.PathLike, out_dir: str | os.PathLike,
            train_images: int = 0, test_images: int = 0, download: bool = False) -> Path:
    """Read dataset ``name`` from ``root`` and write ``out_dir/data.pt`` and
    ``out_dir/classes.tsv``.  Returns the path of ``data.pt``."""
    if name not in DATASETS:
        raise KeyError(f"unknown dataset {name!r}; allowed: {', '.join(DATASETS)}")
    reader, downloader = DATASETS[name]
    root = Path(root)
    if download and downloader is not None:
        try:
            check_root(name, root)
        except FileNotFoundError:
            root.mkdir(parents=True, exist_ok=True)
            try:
                downloader(root)
            except Exception as e:
                raise RuntimeError(f"downloading {name} into {root} failed ({e}); {_how_to_get(name)}") from e
    raw = reader(root)
    tr = balanced_subset(raw.train_labels, train_images, seed=0)
    te = balanced_subset(raw.test_labels, test_images, seed=1)
    x = torch.from_numpy(raw.train_images[tr])
    xf = x.float().div(255.0)
    data = {
        "dataset": name,
        "train_images": x.contiguous(),
        "train_labels": torch.from_numpy(raw.train_labels[tr]),
        "test_images": torch.from_numpy(raw.test_images[te]).contiguous(),
        "test_labels": torch.from_numpy(raw.test_labels[te]),
        "classes": raw.classes,
        "mean": xf.mean(dim=(0, 2, 3)).tolist(),
        "std": xf.std(dim=(0, 2, 3)).tolist(),
    }
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cmap = class_map(name)
    if [c for _, c, _ in cmap] != raw.classes:
        raise ValueError(f"resources/{name}.tsv does not list the classes of {name} in order: {raw.classes}")
    tsv = out / "classes.tsv"
    tmp = tsv.with_name("classes.tsv.tmp")
    tmp.write_text("index\tname\tsynset\n" + "".join(f"{i}\t{c}\t{s}\n" for i, c, s in cmap))
    os.replace(tmp, tsv)
    path = out / "data.pt"
    _atomic_save(data, path)
    return path


def load_prepared(path: str | os.PathLike) -> dict:
    """Load ``data.pt`` (see docs/INTERFACES.md)."""
    return torch.load(path, map_location="cpu", weights_only=False)
