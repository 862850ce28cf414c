"""The one prepared format every later stage reads, and :func:`prepare`, which writes it.

:func:`prepare` reads a dataset (:mod:`negatives.data.datasets`) and writes
``data.pt`` (docs/INTERFACES.md) and ``classes.tsv`` with each class's
WordNet 3.0 noun synset.  Two storages of ``data.pt``:

* ``memory`` -- uint8 image tensors ``[N, C, H, W]``, int64 labels, class
  names, the per-channel mean and std of the training images;
* ``stream`` -- image folders too large for memory: the file names and labels
  only; images are decoded, resized and centre-cropped to a fixed side in
  DataLoader worker processes while training.

``storage: auto`` picks ``stream`` when the decoded images would exceed
``stream_above_gb``.  Training and probes read either through one interface,
:func:`~negatives.data.sources.open_train_source` /
:func:`~negatives.data.sources.open_source`.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from ..defaults import check_partial, check_subset_size
from ..runtime.atomic import atomic_torch_save, atomic_write
from ..runtime.memory import check_fits
from .datasets import DATASETS, check_root, class_map, dataset_spec, folder_synsets, reader_options
from .readers import FolderIndex, RawDataset
from .sources import FolderSource, data_digest

__all__ = ["STORAGES", "STATS_ELEMENTS", "balanced_subset", "channel_stats", "prepare"]

#: values of ``datasets.NAME.storage``
STORAGES = ("auto", "memory", "stream")

#: mean and std are computed over at most this many uint8 values (a fixed
#: sample of whole images beyond it): all of Fashion-MNIST, CIFAR and STL-10
STATS_ELEMENTS = 2**28


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
            raise ValueError(
                f"class {c} has {len(members)} examples, fewer than the {want} a balanced subset of {n} needs"
            )
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


# ------------------------------------------------------------------ prepare


def _decode_all(source: FolderSource, indices=None, batch_size: int = 256) -> torch.Tensor:
    """uint8 ``[len(indices), 3, S, S]``: the images ``indices`` (all by default), in order."""
    order = torch.arange(source.num_images) if indices is None else torch.as_tensor(indices)
    out = torch.empty((len(order), *source.shape), dtype=torch.uint8)
    at = 0
    for x, _, _ in source.batches(order, batch_size):
        out[at : at + len(x)] = x
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
        raise ValueError(
            f"datasets.{name}.storage: stream is only for image folders "
            f"({', '.join(n for n, d in DATASETS.items() if d.is_folder)}); allowed: auto, memory"
        )
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


def _prepare_folder(
    name: str,
    index: FolderIndex,
    train_images: int,
    test_images: int,
    storage: str,
    image_size: int,
    stream_above_gb: float,
    workers: int | None,
) -> dict:
    tr = balanced_subset(index.train_labels, train_images, seed=0)
    te = balanced_subset(index.test_labels, test_images, seed=1)
    train = FolderSource(index.root, [index.train_files[i] for i in tr], index.train_labels[tr], image_size, workers)
    test = FolderSource(index.root, [index.test_files[i] for i in te], index.test_labels[te], image_size, workers)
    per_image = 3 * image_size * image_size
    storage = _choose_storage(storage, (train.num_images + test.num_images) * per_image, stream_above_gb)
    data = {"dataset": name, "storage": storage, "classes": index.classes, "image_size": image_size}
    _check_memory(name, storage, train.num_images, test.num_images, image_size)
    if storage == "stream":
        sample = _decode_all(train, _stats_sample(train.num_images, per_image))
        data.update(
            root=str(index.root.resolve()),
            train_files=train.files,
            train_labels=train.labels,
            test_files=test.files,
            test_labels=test.labels,
        )
    else:
        sample = _decode_all(train)
        data.update(
            train_images=sample, train_labels=train.labels, test_images=_decode_all(test), test_labels=test.labels
        )
    data["mean"], data["std"] = channel_stats(sample)
    return data


#: keys of ``datasets.NAME`` that say where the images are read from or how
#: they are stored, or touch only the test split: not which training images
#: a run sees
_NOT_TRAINING = ("root", "download", "storage", "stream_above_gb", "test_images")


def training_data_settings(dataset: dict) -> dict:
    """The settings of one ``datasets.NAME`` entry that decide which training
    images a ``data.pt`` holds (``train_images`` and the format's own keys);
    ``data.pt`` records them and a run's checkpoint copies them.

    >>> training_data_settings({"root": "/d", "train_images": 8000, "test_images": 0, "storage": "auto"})
    {'train_images': 8000}
    """
    return {k: v for k, v in dataset.items() if k not in _NOT_TRAINING}


def _check_memory(name: str, storage: str, n_train: int, n_test: int, image_size: int) -> None:
    """Refuse, before decoding, images that cannot fit in memory: all of
    them (``memory``), or the sample the statistics are computed on
    (``stream``), each with its float copy for :func:`channel_stats`."""
    per_image = 3 * image_size * image_size
    sample = len(_stats_sample(n_train, per_image))
    stats = sample * per_image * 4
    if storage == "memory":
        check_fits(
            (n_train + n_test) * per_image + stats,
            f"datasets.{name}.storage memory: {n_train + n_test:,} decoded images of 3x{image_size}x"
            f"{image_size} (datasets.{name}.image_size {image_size})",
            f"use datasets.{name}.storage: stream, or lower image_size or train_images / test_images",
        )
    else:
        check_fits(
            sample * per_image + stats,
            f"datasets.{name}.image_size {image_size}: {sample:,} decoded images of 3x{image_size}x{image_size}"
            " for the channel statistics",
            f"lower datasets.{name}.image_size",
        )


def _common_settings(settings: dict) -> tuple[bool, str, float, dict]:
    """``(download, storage, stream_above_gb, the format's own keys)`` of a dataset's settings."""
    options = dict(settings)
    return options.pop("download", False), options.pop("storage", "auto"), options.pop("stream_above_gb", 8.0), options


def _write_classes(out: Path, rows: list[tuple[int, str, str]]) -> None:
    text = "index\tname\tsynset\n" + "".join(f"{i}\t{c}\t{s}\n" for i, c, s in rows)
    atomic_write(out / "classes.tsv", lambda tmp: tmp.write_text(text))


def prepare(
    name: str,
    root: str | os.PathLike,
    out_dir: str | os.PathLike,
    train_images: int = 0,
    test_images: int = 0,
    *,
    workers: int | None = None,
    wordnet=None,
    **settings,
) -> Path:
    """Read dataset ``name`` from ``root`` and write ``out_dir/data.pt`` and
    ``out_dir/classes.tsv``.  Returns the path of ``data.pt``.

    ``train_images`` / ``test_images``: class-balanced subsets (0: all);
    ``workers``: decoding processes for image folders; ``wordnet``: the
    reader that maps wnids to synsets (default: the offline WordNet).
    ``settings``: the dataset's other config keys -- ``download`` (default
    false: fetch missing files with torchvision where the format allows),
    ``storage`` (``auto``, ``memory``, ``stream``; default ``auto``) and
    ``stream_above_gb`` (default 8): see the module docstring (``stream``
    only for image folders); then the format's own keys (``labels`` for
    cifar100, ``unlabeled`` for stl10, ``image_size`` for image folders).
    """
    download, storage, stream_above_gb, options = _common_settings(settings)
    spec = dataset_spec(name)
    check_partial(
        {
            "datasets": {
                name: {
                    "root": str(root),
                    "download": download,
                    "train_images": train_images,
                    "test_images": test_images,
                    "storage": storage,
                    "stream_above_gb": stream_above_gb,
                    **options,
                }
            }
        }
    )
    unknown = sorted(set(options) - set(spec.options))
    if unknown:
        raise ValueError(
            f"datasets.{name}: unknown option(s) {', '.join(unknown)}; allowed: {', '.join(spec.options) or 'none'}"
        )
    root = Path(root)
    raw = _read(name, root, download, options)
    for split, n in (("train_images", train_images), ("test_images", test_images)):
        check_subset_size(f"datasets.{name}.{split}", n, len(raw.classes))
    if isinstance(raw, FolderIndex):
        rows = _folder_classes(name, root, raw, wordnet)
        data = _prepare_folder(
            name,
            raw,
            train_images,
            test_images,
            storage,
            int(options.get("image_size") or spec.image_size),
            stream_above_gb,
            workers,
        )
    else:
        data = _prepare_arrays(name, raw, train_images, test_images, storage)
        rows = _array_classes(name, raw)
    return _write(Path(out_dir), rows, data, {"train_images": train_images, **options})


def _read(name: str, root: Path, download: bool, options: dict) -> RawDataset | FolderIndex:
    """Dataset ``name`` as its reader gives it, fetched first when ``download``
    asks and files are missing (where the format allows); a missing file is named with where to get it."""
    spec = dataset_spec(name)
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
            spec.check(root, **reader_options(spec, options))
        except FileNotFoundError as e:
            raise FileNotFoundError(f"{e}; {spec.hint}") from None
    return spec.reader(root, **reader_options(spec, options))


def _folder_classes(name: str, root: Path, index: FolderIndex, wordnet) -> list[tuple[int, str, str]]:
    """The rows of ``classes.tsv`` of an image folder: each class with the synset of its wnid."""
    synsets = folder_synsets(name, root, index.wnids, wordnet)
    return [(i, c, s) for i, (c, s) in enumerate(zip(index.classes, synsets))]


def _array_classes(name: str, raw: RawDataset) -> list[tuple[int, str, str]]:
    """The rows of ``classes.tsv`` of an array dataset, from its class map in ``resources/``."""
    resource = raw.class_map or name
    rows = class_map(resource)
    if [c for _, c, _ in rows] != raw.classes:
        raise ValueError(f"resources/{resource}.tsv does not list the classes of {name} in order: {raw.classes}")
    return rows


def _write(out: Path, rows: list[tuple[int, str, str]], data: dict, settings: dict) -> Path:
    """Write ``out/classes.tsv`` and ``out/data.pt`` (with its digest and the
    ``settings`` that chose its training images); returns the path of ``data.pt``."""
    out.mkdir(parents=True, exist_ok=True)
    _write_classes(out, rows)
    data["digest"] = data_digest(data)  # what a run trained on it records
    # the storage as chosen: streamed images are cropped from the full file, so it changes a run
    data["settings"] = {**training_data_settings(settings), "storage": data["storage"]}
    path = out / "data.pt"
    atomic_torch_save(data, path)
    return path
