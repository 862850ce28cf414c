"""Which datasets the workflow reads: a registry from a dataset's name to its
on-disk format (reader, downloader, a cheap check of the files, where to get
them), the class maps (``resources/{class map}.tsv``: each class's WordNet 3.0
noun synset), and the Fashion-MNIST IDX reader (Debian's
``dataset-fashion-mnist`` puts its files in ``/usr/share/datasets/fashion-mnist``,
or torchvision's download).  CIFAR-10/100 pickles, STL-10 binaries and
ImageNet / Tiny-ImageNet folders are read in :mod:`negatives.data.readers`.
"""

from __future__ import annotations

import gzip
import os
import struct
import warnings
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import numpy as np

from .folders import check_imagenet, check_tiny_imagenet, index_imagenet, index_tiny_imagenet
from .readers import (
    FolderIndex,
    RawDataset,
    check_cifar10,
    check_cifar100,
    check_stl10,
    read_cifar10,
    read_cifar100,
    read_stl10,
)

__all__ = [
    "Dataset",
    "DATASETS",
    "read_idx",
    "read_fashion_mnist",
    "check_root",
    "class_map",
    "folder_synsets",
    "dataset_spec",
    "reader_options",
    "RESOURCES",
]

RESOURCES = Path(__file__).parent / "resources"


# ---------------------------------------------------------------- IDX (MNIST)

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read one IDX file (``.gz`` or plain) into an array of its stored shape.

    Raises ``ValueError`` naming the file when the magic number or the size
    does not match the header, or a ``.gz`` file is cut short or not gzip.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (EOFError, gzip.BadGzipFile, zlib.error) as e:  # a download or copy cut short
        raise ValueError(f"{path}: not a complete gzip file ({e}); fetch it again") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise ValueError(f"{path}: not an IDX file (bad magic number)")
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    ndim = raw[3]
    if len(raw) < 4 + 4 * ndim:
        raise ValueError(f"{path}: truncated IDX file (its header names {ndim} dimensions, the file ends first)")
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
FASHION_MNIST_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]


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
    paths = {k: _idx_path(root, stem) for k, stem in FASHION_MNIST_FILES.items()}
    arrays = {k: read_idx(p) for k, p in paths.items()}
    for key, array in arrays.items():  # image and label files swapped, or another IDX file under the name
        want = "images [N, 28, 28]" if key.endswith("images") else "labels [N]"
        if array.ndim != (3 if key.endswith("images") else 1) or array.dtype != np.uint8:
            swapped = (
                " (it holds labels: are the image and label files swapped?)"
                if array.ndim == 1
                else " (it holds images: are the image and label files swapped?)"
                if array.ndim == 3
                else ""
            )
            raise ValueError(
                f"{paths[key]}: {array.ndim}-d {array.dtype} IDX data {list(array.shape)}, expected "
                f"uint8 {want}{swapped}; put the Fashion-MNIST files under their own names"
            )
    for split in ("train", "test"):
        n_img, n_lab = len(arrays[f"{split}_images"]), len(arrays[f"{split}_labels"])
        if n_img != n_lab:
            raise ValueError(f"{root}: {split} split has {n_img} images but {n_lab} labels")
        labels = arrays[f"{split}_labels"]
        if n_lab and labels.max() >= len(FASHION_MNIST_CLASSES):
            raise ValueError(
                f"{paths[f'{split}_labels']}: label {labels.max()} outside 0..9; it is not a Fashion-MNIST label file"
            )
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


def _check_fashion_mnist(root: Path) -> None:
    missing = [stem for stem in FASHION_MNIST_FILES.values() if _idx_path(root, stem) is None]
    if missing:
        raise FileNotFoundError(
            f"data directory {root} for dataset 'fashion-mnist' lacks {', '.join(s + '[.gz]' for s in missing)}"
        )


def _torchvision_download(cls_name: str, **kw) -> Callable[[Path], None]:
    def download(root: Path) -> None:
        import torchvision

        getattr(torchvision.datasets, cls_name)(str(root), download=True, **kw)

    return download


# ------------------------------------------------------------------ registry


class Dataset(NamedTuple):
    """One on-disk format.  ``reader(root, **options) -> RawDataset | FolderIndex``;
    ``check(root, **options)`` is its cheap part (files present, binary sizes,
    folder names), raising ``FileNotFoundError`` / ``ValueError`` naming the
    file; ``options``: the keys of ``datasets.NAME`` beyond the common ones
    that apply to it; ``image_size``: image folders only, the default side
    of the decoded images."""

    reader: Callable[..., RawDataset | FolderIndex]
    downloader: Callable[[Path], None] | None
    check: Callable[..., object]
    hint: str
    options: tuple[str, ...] = ()
    image_size: int | None = None

    @property
    def is_folder(self) -> bool:
        return self.image_size is not None


_TORCHVISION = "or set datasets.{name}.download: true to fetch it with torchvision"

#: dataset name -> its format
DATASETS: dict[str, Dataset] = {
    "fashion-mnist": Dataset(
        read_fashion_mnist,
        _download_fashion_mnist,
        _check_fashion_mnist,
        "install Debian's dataset-fashion-mnist (files in /usr/share/datasets/fashion-mnist), "
        "or set datasets.fashion-mnist.download: true to fetch it with torchvision",
    ),
    "cifar10": Dataset(
        read_cifar10,
        _torchvision_download("CIFAR10"),
        check_cifar10,
        "put data_batch_1..5, test_batch and batches.meta (cifar-10-python.tar.gz from "
        "https://www.cs.toronto.edu/~kriz/cifar.html, unpacked) in ROOT/cifar-10-batches-py/, "
        + _TORCHVISION.format(name="cifar10"),
    ),
    "cifar100": Dataset(
        read_cifar100,
        _torchvision_download("CIFAR100"),
        check_cifar100,
        "put train, test and meta (cifar-100-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html, "
        "unpacked) in ROOT/cifar-100-python/, " + _TORCHVISION.format(name="cifar100"),
        options=("labels",),
    ),
    "stl10": Dataset(
        read_stl10,
        _torchvision_download("STL10", split="train+unlabeled"),
        check_stl10,
        "put train_X.bin, train_y.bin, test_X.bin, test_y.bin, class_names.txt (and unlabeled_X.bin) "
        "(stl10_binary.tar.gz from https://cs.stanford.edu/~acoates/stl10/, unpacked) in ROOT/stl10_binary/, "
        + _TORCHVISION.format(name="stl10"),
        options=("unlabeled",),
    ),
    "imagenet": Dataset(
        index_imagenet,
        None,
        check_imagenet,
        "put ILSVRC-2012 in ROOT/train/<wnid>/*.JPEG and ROOT/val/<wnid>/*.JPEG (the validation images "
        "sorted into wnid folders, e.g. with the usual valprep.sh); it cannot be downloaded automatically",
        options=("image_size",),
        image_size=224,
    ),
    "tiny-imagenet": Dataset(
        index_tiny_imagenet,
        None,
        check_tiny_imagenet,
        "unpack tiny-imagenet-200.zip (http://cs231n.stanford.edu/tiny-imagenet-200.zip) so that ROOT holds "
        "wnids.txt, words.txt, train/<wnid>/images/ and val/images/ with val/val_annotations.txt",
        options=("image_size",),
        image_size=64,
    ),
}


def dataset_spec(name: str) -> Dataset:
    if name not in DATASETS:
        raise KeyError(f"unknown dataset {name!r}; allowed: {', '.join(DATASETS)}")
    return DATASETS[name]


def reader_options(spec: Dataset, options: dict) -> dict:
    """The options the reader and check take (``image_size`` is for decoding)."""
    return {k: options[k] for k in spec.options if k in options and k != "image_size"}


def _how_to_get(name: str) -> str:
    return dataset_spec(name).hint


def check_root(name: str, root: str | os.PathLike, wordnet=None, **options) -> None:
    """Check that ``root`` holds dataset ``name`` as its reader expects.

    Raises ``FileNotFoundError`` saying what is missing where and how to get
    it, or ``ValueError`` naming a malformed file (a truncated binary, a class
    folder without a WordNet synset).  Image folders: every wnid is looked up
    in WordNet (``wordnet``: a reader; by default the offline one, skipped
    when WordNet is not installed -- the prepare job checks again).
    """
    spec = dataset_spec(name)
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"data directory {root} for dataset {name!r} does not exist; {spec.hint}")
    try:
        found = spec.check(root, **reader_options(spec, options))
    except FileNotFoundError as e:
        raise FileNotFoundError(f"{e}; {spec.hint}") from None
    if spec.is_folder:
        if wordnet is None:
            from .wordnet import WordNetNotFound, load_wordnet

            try:
                wordnet = load_wordnet()
            except WordNetNotFound:
                return
        folder_synsets(name, root, found, wordnet)


def folder_synsets(name: str, root: Path, wnids: list[str], wordnet=None) -> list[str]:
    """WordNet 3.0 synset of each wnid; ``ValueError`` naming the class folder
    (or ``wnids.txt``) of a wnid that is not a noun synset."""
    from .wordnet import synset_from_wnid

    synsets = []
    for w in wnids:
        try:
            with warnings.catch_warnings():  # NLTK warns before it raises on an unknown offset
                warnings.simplefilter("ignore", UserWarning)
                synsets.append(synset_from_wnid(w, wordnet))
        except ValueError as e:
            where = root / "wnids.txt" if name == "tiny-imagenet" else root / "train" / w
            raise ValueError(f"{where}: class {w} has no WordNet 3.0 synset ({e})") from None
    return synsets


def known_classes(name: str, options: dict) -> int | None:
    """How many classes dataset ``name`` has with ``options`` (its
    ``datasets.NAME`` entry), where that is fixed by its format; ``None``
    for image folders, whose classes are their folders."""
    if dataset_spec(name).is_folder:
        return None
    return len(class_map("cifar100-coarse" if name == "cifar100" and options.get("labels") == "coarse" else name))


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
