"""Readers for the standard on-disk formats of the real datasets.

Each reader takes the dataset's root directory and returns either a
:class:`RawDataset` (small datasets, every image in memory as uint8) or a
:class:`FolderIndex` (image folders: file names and labels, decoded later by
:func:`negatives.data.folders.decode_image`, in memory or streamed; ImageNet and
Tiny-ImageNet in :mod:`negatives.data.folders`).

=================  =================================================================
CIFAR-10           ``cifar-10-batches-py/data_batch_1..5, test_batch, batches.meta``
CIFAR-100          ``cifar-100-python/train, test, meta`` (fine or coarse labels)
STL-10             ``stl10_binary/train_X.bin, train_y.bin, test_X.bin, test_y.bin,
                   class_names.txt`` (+ ``unlabeled_X.bin``)
=================  =================================================================

The root may be the directory that holds ``cifar-10-batches-py`` (or
``cifar-100-python``, ``stl10_binary``: torchvision's download layout) or that
folder itself.  Every error names the file or folder at fault.

Each ``check_*`` function is the cheap part of its reader (files present,
binary sizes, folder names), run by ``negatives.config.check_config`` before
any job starts; the reader repeats it and checks the contents.
"""

from __future__ import annotations

import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = [
    "RawDataset",
    "FolderIndex",
    "CIFAR10_FILES",
    "CIFAR100_FILES",
    "STL10_FILES",
    "read_cifar10",
    "read_cifar100",
    "read_stl10",
    "read_stl10_images",
    "check_cifar10",
    "check_cifar100",
    "check_stl10",
]


@dataclass
class RawDataset:
    """A dataset in memory.  ``synsets``: one WordNet synset per class when
    the format names them (wnids), else ``None`` (the map is
    ``resources/{class_map}.tsv``)."""

    train_images: np.ndarray  # uint8 [N, C, H, W]
    train_labels: np.ndarray  # int64 [N]
    test_images: np.ndarray  # uint8 [M, C, H, W]
    test_labels: np.ndarray  # int64 [M]
    classes: list[str]
    unlabeled_images: np.ndarray | None = None  # uint8 [U, C, H, W]: pretraining only (label -1)
    class_map: str | None = None  # resources/{class_map}.tsv; None: the dataset's name
    synsets: list[str] | None = None


@dataclass
class FolderIndex:
    """An image folder, indexed: paths relative to ``root`` and int64 labels."""

    root: Path
    train_files: list[str]
    train_labels: np.ndarray  # int64 [N]
    test_files: list[str]
    test_labels: np.ndarray  # int64 [M]
    wnids: list[str]  # class i is wnids[i]
    classes: list[str] = field(default_factory=list)  # readable names (words.txt), else the wnids


def _base(root: Path, folder: str) -> Path:
    """``root/folder`` when it exists (torchvision's layout), else ``root``."""
    return root / folder if (root / folder).is_dir() else root


def _require_files(base: Path, names, what: str) -> list[Path]:
    if not base.is_dir():
        raise FileNotFoundError(f"data directory {base} for {what} does not exist")
    missing = [n for n in names if not (base / n).is_file()]
    if missing:
        raise FileNotFoundError(f"{base} lacks {', '.join(missing)} ({what})")
    return [base / n for n in names]


# -------------------------------------------------------------------- CIFAR

CIFAR10_DIR, CIFAR100_DIR = "cifar-10-batches-py", "cifar-100-python"
CIFAR10_FILES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]
CIFAR100_FILES = ["train", "test", "meta"]


class _CifarUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays, lists and dicts only: a CIFAR file cannot run code."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
    }

    def find_class(self, module, name):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a CIFAR pickle")


def _unpickle(path: Path) -> dict:
    """A CIFAR python pickle (Python 2, ``encoding='bytes'``) with str keys."""
    try:
        with open(path, "rb") as f:
            d = _CifarUnpickler(f, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as e:
        raise ValueError(f"{path}: not a complete CIFAR python pickle ({e})") from None
    if not isinstance(d, dict):
        raise ValueError(f"{path}: not a CIFAR python pickle (a {type(d).__name__}, expected a dict)")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in d.items()}


def _field(path: Path, batch: dict, key: str):
    if key not in batch:
        raise ValueError(f"{path}: CIFAR pickle lacks {key!r} (has {', '.join(map(repr, batch))})")
    return batch[key]


def _cifar_images(path: Path, batch: dict) -> np.ndarray:
    """``data`` ``[N, 3072]`` (1024 red, 1024 green, 1024 blue, row-major 32x32) -> uint8 ``[N, 3, 32, 32]``."""
    data = np.asarray(_field(path, batch, "data"), dtype=np.uint8)
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise ValueError(f"{path}: 'data' has shape {list(data.shape)}, expected [N, 3072]")
    return data.reshape(-1, 3, 32, 32)


def _cifar_labels(path: Path, batch: dict, key: str, n: int, num_classes: int) -> np.ndarray:
    labels = np.asarray(_field(path, batch, key), dtype=np.int64)
    if labels.shape != (n,):
        raise ValueError(f"{path}: {n} images but {labels.size} {key!r}")
    if n and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"{path}: {key!r} outside 0..{num_classes - 1}")
    return labels


def _names(path: Path, meta: dict, key: str) -> list[str]:
    return [n.decode() if isinstance(n, bytes) else str(n) for n in _field(path, meta, key)]


def check_cifar10(root: str | os.PathLike) -> None:
    _require_files(_base(Path(root), CIFAR10_DIR), CIFAR10_FILES, "CIFAR-10 python pickles")


def check_cifar100(root: str | os.PathLike, labels: str = "fine") -> None:
    _require_files(_base(Path(root), CIFAR100_DIR), CIFAR100_FILES, "CIFAR-100 python pickles")


def read_cifar10(root: str | os.PathLike) -> RawDataset:
    """CIFAR-10: 50,000 train (5 batches in order) and 10,000 test images, 3x32x32."""
    base = _base(Path(root), CIFAR10_DIR)
    paths = _require_files(base, CIFAR10_FILES, "CIFAR-10 python pickles")
    classes = _names(paths[-1], _unpickle(paths[-1]), "label_names")
    split = {}
    for name, files in (("train", paths[:5]), ("test", paths[5:6])):
        images, labels = [], []
        for p in files:
            batch = _unpickle(p)
            images.append(_cifar_images(p, batch))
            labels.append(_cifar_labels(p, batch, "labels", len(images[-1]), len(classes)))
        split[name] = np.concatenate(images), np.concatenate(labels)
    return RawDataset(*split["train"], *split["test"], classes=classes)


def read_cifar100(root: str | os.PathLike, labels: str = "fine") -> RawDataset:
    """CIFAR-100 with its 100 ``fine`` labels (default) or its 20 ``coarse``
    superclasses (class map ``resources/cifar100-coarse.tsv``)."""
    if labels not in ("fine", "coarse"):
        raise ValueError(f"datasets.cifar100.labels: {labels!r}; allowed: fine, coarse")
    base = _base(Path(root), CIFAR100_DIR)
    train, test, meta = _require_files(base, CIFAR100_FILES, "CIFAR-100 python pickles")
    classes = _names(meta, _unpickle(meta), f"{labels}_label_names")
    split = {}
    for name, p in (("train", train), ("test", test)):
        batch = _unpickle(p)
        images = _cifar_images(p, batch)
        split[name] = images, _cifar_labels(p, batch, f"{labels}_labels", len(images), len(classes))
    return RawDataset(
        *split["train"],
        *split["test"],
        classes=classes,
        class_map="cifar100" if labels == "fine" else "cifar100-coarse",
    )


# ------------------------------------------------------------------- STL-10

STL10_DIR = "stl10_binary"
STL10_FILES = ["train_X.bin", "train_y.bin", "test_X.bin", "test_y.bin", "class_names.txt"]
STL10_UNLABELED = "unlabeled_X.bin"
_STL10_IMAGE_BYTES = 3 * 96 * 96


def _stl10_files(root: Path, unlabeled: bool) -> list[Path]:
    names = STL10_FILES + ([STL10_UNLABELED] if unlabeled else [])
    return _require_files(_base(root, STL10_DIR), names, "STL-10 binaries")


def _check_stl10_sizes(x: Path, y: Path | None) -> int:
    """Number of images in ``x``; raises ``ValueError`` naming a truncated file."""
    size = x.stat().st_size
    if size % _STL10_IMAGE_BYTES:
        raise ValueError(
            f"{x}: truncated STL-10 image binary ({size} bytes, not a multiple of "
            f"{_STL10_IMAGE_BYTES} = 3x96x96 bytes per image)"
        )
    n = size // _STL10_IMAGE_BYTES
    if y is not None and y.stat().st_size != n:
        raise ValueError(f"{y}: {y.stat().st_size} labels (one byte each) for the {n} images of {x.name}")
    return n


def check_stl10(root: str | os.PathLike, unlabeled: bool = False) -> None:
    paths = _stl10_files(Path(root), unlabeled)
    _check_stl10_sizes(paths[0], paths[1])
    _check_stl10_sizes(paths[2], paths[3])
    if unlabeled:
        _check_stl10_sizes(paths[5], None)


def read_stl10_images(path: str | os.PathLike) -> np.ndarray:
    """An STL-10 ``*_X.bin`` -> uint8 ``[N, 3, 96, 96]``.  Each image is stored
    channel by channel, each channel column-major (so transposed here)."""
    path = Path(path)
    _check_stl10_sizes(path, None)
    raw = np.fromfile(path, dtype=np.uint8)
    return np.ascontiguousarray(raw.reshape(-1, 3, 96, 96).transpose(0, 1, 3, 2))


def _stl10_labels(path: Path, num_classes: int) -> np.ndarray:
    labels = np.fromfile(path, dtype=np.uint8).astype(np.int64)
    if labels.size and (labels.min() < 1 or labels.max() > num_classes):
        raise ValueError(f"{path}: labels outside 1..{num_classes}")
    return labels - 1  # 1..10 -> 0..9


def read_stl10(root: str | os.PathLike, unlabeled: bool = False) -> RawDataset:
    """STL-10: 5,000 train and 8,000 test images, 3x96x96, labels 0..9; with
    ``unlabeled`` also the 100,000 unlabeled images (for pretraining only)."""
    paths = _stl10_files(Path(root), unlabeled)
    check_stl10(root, unlabeled)
    classes = [line.strip() for line in paths[4].read_text().splitlines() if line.strip()]
    return RawDataset(
        train_images=read_stl10_images(paths[0]),
        train_labels=_stl10_labels(paths[1], len(classes)),
        test_images=read_stl10_images(paths[2]),
        test_labels=_stl10_labels(paths[3], len(classes)),
        classes=classes,
        unlabeled_images=read_stl10_images(paths[5]) if unlabeled else None,
    )
