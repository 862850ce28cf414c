"""Shared test helpers: tiny datasets in the exact on-disk formats."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def write_idx(path: Path, array) -> None:
    """Write ``array`` (uint8) as a gzipped IDX file (magic 0x0000 08 ndim)."""
    array = np.asarray(array, dtype=np.uint8)
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.tobytes())


def fake_fashion_mnist(root: Path, n_train: int = 64, n_test: int = 32, seed: int = 0) -> Path:
    """A tiny Fashion-MNIST directory under the real file names, labels
    0..9 in turn, and a little class structure in the pixels."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("t10k", n_test)):
        labels = np.arange(n) % 10
        images = rng.integers(0, 256, size=(n, 28, 28))
        images[:, :, :14] //= labels[:, None, None] + 1
        write_idx(root / f"{split}-images-idx3-ubyte.gz", images)
        write_idx(root / f"{split}-labels-idx1-ubyte.gz", labels)
    return root


@pytest.fixture(scope="session")
def fashion_root(tmp_path_factory) -> Path:
    return fake_fashion_mnist(tmp_path_factory.mktemp("fmnist"))
