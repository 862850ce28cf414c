"""Dataset readers and the one prepared format every later stage reads.

A dataset name maps to its on-disk format in :data:`DATASETS` (reader,
downloader, a cheap check of the files, where to get them).  :func:`prepare`
reads a dataset and writes ``data.pt`` (docs/INTERFACES.md) and
``classes.tsv`` with each class's WordNet 3.0 noun synset (from
``resources/{class map}.tsv``, or from the wnids of an image folder).

Two storages of ``data.pt``:

* ``memory`` -- uint8 image tensors ``[N, C, H, W]``, int64 labels, class
  names, the per-channel mean and std of the training images;
* ``stream`` -- image folders too large for memory: the file names and labels
  only; images are decoded, resized and centre-cropped to a fixed side in
  DataLoader worker processes while training.

``storage: auto`` picks ``stream`` when the decoded images would exceed
``stream_above_gb``.  Training and probes read either through one interface,
:func:`open_train_source` / :func:`open_source`: ``source.batches(order,
batch_size)`` yields ``(uint8 images [B, C, H, W], labels [B], indices [B])``.

Formats: Fashion-MNIST (IDX files, plain or gzipped: Debian's
``dataset-fashion-mnist`` puts them in ``/usr/share/datasets/fashion-mnist``,
or torchvision's download) here; CIFAR-10/100 pickles, STL-10 binaries and
ImageNet / Tiny-ImageNet folders in :mod:`negatives.readers`.
"""

from __future__ import annotations

import gzip
import os
import struct
import warnings
from pathlib import Path
from typing import Callable, Iterator, NamedTuple

import numpy as np
import torch

from .atomic import atomic_torch_save, atomic_write
from .readers import (FolderIndex, RawDataset, check_cifar10, check_cifar100, check_imagenet, check_stl10,
                      check_tiny_imagenet, decode_image, index_imagenet, index_tiny_imagenet, read_cifar10,
                      read_cifar100, read_stl10)

__all__ = [
    "RawDataset",
    "FolderIndex",
    "Dataset",
    "DATASETS",
    "STORAGES",
    "read_idx",
    "read_fashion_mnist",
    "check_root",
    "balanced_subset",
    "channel_stats",
    "prepare",
    "load_prepared",
    "class_map",
    "TensorSource",
    "FolderSource",
    "open_source",
    "open_train_source",
]

RESOURCES = Path(__file__).parent / "resources"

#: values of ``datasets.NAME.storage``
STORAGES = ("auto", "memory", "stream")

#: mean and std are computed over at most this many uint8 values (a fixed
#: sample of whole images beyond it): all of Fashion-MNIST, CIFAR and STL-10
STATS_ELEMENTS = 2**28


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


def _check_fashion_mnist(root: Path) -> None:
    missing = [stem for stem in FASHION_MNIST_FILES.values() if _idx_path(root, stem) is None]
    if missing:
        raise FileNotFoundError(f"data directory {root} for dataset 'fashion-mnist' lacks "
                                f"{', '.join(s + '[.gz]' for s in missing)}")


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
        read_fashion_mnist, _download_fashion_mnist, _check_fashion_mnist,
        "install Debian's dataset-fashion-mnist (files in /usr/share/datasets/fashion-mnist), "
        "or set datasets.fashion-mnist.download: true to fetch it with torchvision"),
    "cifar10": Dataset(
        read_cifar10, _torchvision_download("CIFAR10"), check_cifar10,
        "put data_batch_1..5, test_batch and batches.meta (cifar-10-python.tar.gz from "
        "https://www.cs.toronto.edu/~kriz/cifar.html, unpacked) in ROOT/cifar-10-batches-py/, "
        + _TORCHVISION.format(name="cifar10")),
    "cifar100": Dataset(
        read_cifar100, _torchvision_download("CIFAR100"), check_cifar100,
        "put train, test and meta (cifar-100-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html, "
        "unpacked) in ROOT/cifar-100-python/, " + _TORCHVISION.format(name="cifar100"),
        options=("labels",)),
    "stl10": Dataset(
        read_stl10, _torchvision_download("STL10", split="train+unlabeled"), check_stl10,
        "put train_X.bin, train_y.bin, test_X.bin, test_y.bin, class_names.txt (and unlabeled_X.bin) "
        "(stl10_binary.tar.gz from https://cs.stanford.edu/~acoates/stl10/, unpacked) in ROOT/stl10_binary/, "
        + _TORCHVISION.format(name="stl10"),
        options=("unlabeled",)),
    "imagenet": Dataset(
        index_imagenet, None, check_imagenet,
        "put ILSVRC-2012 in ROOT/train/<wnid>/*.JPEG and ROOT/val/<wnid>/*.JPEG (the validation images "
        "sorted into wnid folders, e.g. with the usual valprep.sh); it cannot be downloaded automatically",
        options=("image_size",), image_size=224),
    "tiny-imagenet": Dataset(
        index_tiny_imagenet, None, check_tiny_imagenet,
        "unpack tiny-imagenet-200.zip (http://cs231n.stanford.edu/tiny-imagenet-200.zip) so that ROOT holds "
        "wnids.txt, words.txt, train/<wnid>/images/ and val/images/ with val/val_annotations.txt",
        options=("image_size",), image_size=64),
}


def _spec(name: str) -> Dataset:
    if name not in DATASETS:
        raise KeyError(f"unknown dataset {name!r}; allowed: {', '.join(DATASETS)}")
    return DATASETS[name]


def _reader_options(spec: Dataset, options: dict) -> dict:
    """The options the reader and check take (``image_size`` is for decoding)."""
    return {k: options[k] for k in spec.options if k in options and k != "image_size"}


def _how_to_get(name: str) -> str:
    return _spec(name).hint


def check_root(name: str, root: str | os.PathLike, wordnet=None, **options) -> None:
    """Check that ``root`` holds dataset ``name`` as its reader expects.

    Raises ``FileNotFoundError`` saying what is missing where and how to get
    it, or ``ValueError`` naming a malformed file (a truncated binary, a class
    folder without a WordNet synset).  Image folders: every wnid is looked up
    in WordNet (``wordnet``: a reader; by default the offline one, skipped
    when WordNet is not installed -- the prepare job checks again).
    """
    spec = _spec(name)
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"data directory {root} for dataset {name!r} does not exist; {spec.hint}")
    try:
        found = spec.check(root, **_reader_options(spec, options))
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


def channel_stats(images: torch.Tensor, seed: int = 0) -> tuple[list[float], list[float]]:
    """Per-channel mean and std (unbiased) of uint8 images ``[N, C, H, W]`` / 255.

    Over all images when they hold at most :data:`STATS_ELEMENTS` values,
    else over a fixed random sample of whole images (``seed``) that does."""
    images = images[_stats_sample(len(images), images[0].numel(), seed)]
    xf = images.float().div(255.0)
    return xf.mean(dim=(0, 2, 3)).tolist(), xf.std(dim=(0, 2, 3)).tolist()


def _stats_sample(n: int, per_image: int, seed: int = 0) -> torch.Tensor:
    """Sorted indices of the images :func:`channel_stats` uses, LongTensor ``[k]``."""
    k = max(1, min(n, STATS_ELEMENTS // per_image))
    if k == n:
        return torch.arange(n)
    return torch.from_numpy(np.sort(np.random.default_rng(seed).choice(n, size=k, replace=False)))


# ------------------------------------------------------------------ sources


def _chunks(order, batch_size: int, drop_last: bool, device=None) -> list[torch.Tensor]:
    order = torch.as_tensor(order, dtype=torch.long, device=device)
    n = len(order) - (len(order) % batch_size if drop_last else 0)
    return [order[i:i + batch_size] for i in range(0, n, batch_size)]


class TensorSource:
    """Images held in memory: uint8 ``images [N, C, H, W]`` and int64
    ``labels [N]``, on any device (batches come out on that device)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor):
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images, self.labels = images, labels

    @property
    def num_images(self) -> int:
        return len(self.images)

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of every image."""
        return tuple(self.images.shape[1:])

    def batches(self, order, batch_size: int, drop_last: bool = False
                ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """For each run of ``batch_size`` indices of ``order`` (a permutation,
        or any index sequence; the last short batch is dropped with
        ``drop_last``): ``(images uint8 [B, C, H, W], labels [B], indices [B])``."""
        for idx in _chunks(order, batch_size, drop_last, self.images.device):
            yield self.images[idx], self.labels[idx], idx


class _Decode(torch.utils.data.Dataset):
    """Item ``i``: ``(uint8 [3, size, size], label, i)``, decoded in the worker."""

    def __init__(self, root: Path, files: list[str], labels: torch.Tensor, size: int):
        self.root, self.files, self.labels, self.size = root, files, labels, size

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        return decode_image(self.root / self.files[i], self.size), self.labels[i], i


def default_workers() -> int:
    """Decoding processes when none are given: the CPU count, at most 8."""
    return min(8, os.cpu_count() or 1)


class FolderSource:
    """Images streamed from files under ``root``: each decoded as RGB, resized
    (shorter side) and centre-cropped to ``image_size`` (:func:`decode_image`)
    in ``workers`` DataLoader processes (0: in this process)."""

    def __init__(self, root: str | os.PathLike, files: list[str], labels, image_size: int,
                 workers: int | None = None):
        if len(files) != len(labels):
            raise ValueError(f"{len(files)} files but {len(labels)} labels")
        self.root, self.files, self.image_size = Path(root), list(files), int(image_size)
        self.labels = torch.as_tensor(labels, dtype=torch.long)
        self.workers = default_workers() if workers is None else int(workers)

    @property
    def num_images(self) -> int:
        return len(self.files)

    @property
    def shape(self) -> tuple[int, int, int]:
        return (3, self.image_size, self.image_size)

    def batches(self, order, batch_size: int, drop_last: bool = False
                ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """As :meth:`TensorSource.batches`, on the CPU (pinned when CUDA is
        available), in order; the workers decode ahead."""
        chunks = [c.tolist() for c in _chunks(order, batch_size, drop_last)]
        if not chunks:
            return
        loader = torch.utils.data.DataLoader(
            _Decode(self.root, self.files, self.labels, self.image_size), batch_sampler=chunks,
            num_workers=min(self.workers, len(chunks)), pin_memory=torch.cuda.is_available())
        yield from loader


def open_source(prepared, split: str = "train", unlabeled: bool = False, workers: int | None = None):
    """The images of one split of a prepared dataset as a source.

    ``prepared``: the path of ``data.pt`` or the dict it holds; ``split``:
    ``train`` or ``test``; ``unlabeled``: append the pretraining-only
    unlabeled images (STL-10) with label -1 to the train split.  Returns a
    :class:`TensorSource` (``storage: memory``) or a :class:`FolderSource`
    (``storage: stream``), both with ``num_images``, ``shape`` ``(C, H, W)``,
    ``labels [N]`` and ``batches(order, batch_size, drop_last=False)``.
    """
    data = prepared if isinstance(prepared, dict) else load_prepared(prepared)
    if split not in ("train", "test"):
        raise ValueError(f"split {split!r}; allowed: train, test")
    if data.get("storage", "memory") == "stream":
        return FolderSource(data["root"], data[f"{split}_files"], data[f"{split}_labels"], data["image_size"],
                            workers)
    images, labels = data[f"{split}_images"], data[f"{split}_labels"]
    extra = data.get("unlabeled_images")
    if split == "train" and unlabeled and extra is not None and len(extra):
        images = torch.cat([images, extra])
        labels = torch.cat([labels, torch.full((len(extra),), -1, dtype=labels.dtype)])
    return TensorSource(images, labels)


def read_images(source, indices, batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """The images ``indices`` of a source, in that order, in memory:
    ``(uint8 [n, C, H, W], labels [n])`` (decoded, for a streamed source)."""
    indices = torch.as_tensor(indices, dtype=torch.long)
    parts = [(x.cpu(), y.cpu()) for x, y, _ in source.batches(indices, batch_size)]
    if not parts:
        return torch.zeros((0, *source.shape), dtype=torch.uint8), torch.zeros(0, dtype=torch.long)
    return torch.cat([x for x, _ in parts]), torch.cat([y for _, y in parts])


def open_train_source(prepared, workers: int | None = None):
    """The pretraining images: the train split plus any unlabeled images
    (label -1).  See :func:`open_source`.  A trainer's epoch::

        source = open_train_source("results/data/cifar10/data.pt")
        order = torch.randperm(source.num_images, generator=g)
        for images, labels, indices in source.batches(order, 512, drop_last=True):
            images = images.to(device, non_blocking=True)   # uint8 [B, C, H, W]
    """
    return open_source(prepared, "train", unlabeled=True, workers=workers)


# ------------------------------------------------------------------ prepare


def _decode_all(source: FolderSource, indices=None, batch_size: int = 256) -> torch.Tensor:
    """uint8 ``[len(indices), 3, S, S]``: the images ``indices`` (all by default), in order."""
    order = torch.arange(source.num_images) if indices is None else torch.as_tensor(indices)
    out = torch.empty((len(order), *source.shape), dtype=torch.uint8)
    at = 0
    for x, _, _ in source.batches(order, batch_size):
        out[at:at + len(x)] = x
        at += len(x)
    return out


def _choose_storage(storage: str, num_bytes: int, stream_above_gb: float) -> str:
    if storage not in STORAGES:
        raise ValueError(f"storage {storage!r}; allowed: {', '.join(STORAGES)}")
    if storage != "auto":
        return storage
    return "stream" if num_bytes > stream_above_gb * 1e9 else "memory"


def _prepare_arrays(name: str, raw: RawDataset, train_images: int, test_images: int, storage: str) -> dict:
    if storage == "stream":
        raise ValueError(f"datasets.{name}.storage: stream is only for image folders "
                         f"({', '.join(n for n, d in DATASETS.items() if d.is_folder)}); allowed: auto, memory")
    tr = balanced_subset(raw.train_labels, train_images, seed=0)
    te = balanced_subset(raw.test_labels, test_images, seed=1)
    x = torch.from_numpy(raw.train_images[tr])
    mean, std = channel_stats(x)
    data = {
        "dataset": name,
        "storage": "memory",
        "train_images": x.contiguous(),
        "train_labels": torch.from_numpy(raw.train_labels[tr]),
        "test_images": torch.from_numpy(raw.test_images[te]).contiguous(),
        "test_labels": torch.from_numpy(raw.test_labels[te]),
        "classes": raw.classes,
        "mean": mean,
        "std": std,
    }
    if raw.unlabeled_images is not None:
        data["unlabeled_images"] = torch.from_numpy(raw.unlabeled_images).contiguous()
    return data


def _prepare_folder(name: str, index: FolderIndex, train_images: int, test_images: int, storage: str,
                    image_size: int, stream_above_gb: float, workers: int | None) -> dict:
    tr = balanced_subset(index.train_labels, train_images, seed=0)
    te = balanced_subset(index.test_labels, test_images, seed=1)
    train = FolderSource(index.root, [index.train_files[i] for i in tr], index.train_labels[tr], image_size, workers)
    test = FolderSource(index.root, [index.test_files[i] for i in te], index.test_labels[te], image_size, workers)
    per_image = 3 * image_size * image_size
    storage = _choose_storage(storage, (train.num_images + test.num_images) * per_image, stream_above_gb)
    data = {"dataset": name, "storage": storage, "classes": index.classes, "image_size": image_size}
    if storage == "stream":
        sample = _decode_all(train, _stats_sample(train.num_images, per_image))
        data.update(root=str(index.root.resolve()), train_files=train.files, train_labels=train.labels,
                    test_files=test.files, test_labels=test.labels)
    else:
        sample = _decode_all(train)
        data.update(train_images=sample, train_labels=train.labels,
                    test_images=_decode_all(test), test_labels=test.labels)
    data["mean"], data["std"] = channel_stats(sample)
    return data


def _write_classes(out: Path, rows: list[tuple[int, str, str]]) -> None:
    text = "index\tname\tsynset\n" + "".join(f"{i}\t{c}\t{s}\n" for i, c, s in rows)
    atomic_write(out / "classes.tsv", lambda tmp: tmp.write_text(text))


def prepare(name: str, root: str | os.PathLike, out_dir: str | os.PathLike,
            train_images: int = 0, test_images: int = 0, download: bool = False, *,
            storage: str = "auto", stream_above_gb: float = 8.0, workers: int | None = None,
            wordnet=None, **options) -> Path:
    """Read dataset ``name`` from ``root`` and write ``out_dir/data.pt`` and
    ``out_dir/classes.tsv``.  Returns the path of ``data.pt``.

    ``train_images`` / ``test_images``: class-balanced subsets (0: all);
    ``download``: fetch missing files (torchvision) where the format allows;
    ``storage`` (``auto``, ``memory``, ``stream``) and ``stream_above_gb``:
    see the module docstring (``stream`` only for image folders);
    ``workers``: decoding processes for image folders; ``options``: the
    format's own keys (``labels`` for cifar100, ``unlabeled`` for stl10,
    ``image_size`` for image folders).  ``wordnet``: the reader that maps
    wnids to synsets (default: the offline WordNet).
    """
    spec = _spec(name)
    unknown = sorted(set(options) - set(spec.options))
    if unknown:
        raise ValueError(f"datasets.{name}: unknown option(s) {', '.join(unknown)}; "
                         f"allowed: {', '.join(spec.options) or 'none'}")
    root = Path(root)
    if download and spec.downloader is not None:
        try:
            check_root(name, root, **options)
        except (FileNotFoundError, ValueError):
            root.mkdir(parents=True, exist_ok=True)
            try:
                spec.downloader(root)
            except Exception as e:
                raise RuntimeError(f"downloading {name} into {root} failed ({e}); {spec.hint}") from e
    if not spec.is_folder:
        try:
            spec.check(root, **_reader_options(spec, options))
        except FileNotFoundError as e:
            raise FileNotFoundError(f"{e}; {spec.hint}") from None
    raw = spec.reader(root, **_reader_options(spec, options))
    if isinstance(raw, FolderIndex):
        synsets = folder_synsets(name, root, raw.wnids, wordnet)
        rows = [(i, c, s) for i, (c, s) in enumerate(zip(raw.classes, synsets))]
        data = _prepare_folder(name, raw, train_images, test_images, storage,
                               int(options.get("image_size") or spec.image_size), stream_above_gb, workers)
    else:
        data = _prepare_arrays(name, raw, train_images, test_images, storage)
        resource = raw.class_map or name
        rows = class_map(resource)
        if [c for _, c, _ in rows] != raw.classes:
            raise ValueError(f"resources/{resource}.tsv does not list the classes of {name} in order: {raw.classes}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _write_classes(out, rows)
    path = out / "data.pt"
    atomic_torch_save(data, path)
    return path


def load_prepared(path: str | os.PathLike) -> dict:
    """Load ``data.pt`` (see docs/INTERFACES.md)."""
    return torch.load(path, map_location="cpu", weights_only=False)
