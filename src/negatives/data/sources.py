"""Reading a prepared dataset batch by batch, whichever its storage: images in
memory (:class:`TensorSource`) or image files decoded in DataLoader workers
(:class:`FolderSource`).  ``source.batches(order, batch_size)`` yields
``(uint8 images [B, C, H, W], labels [B], indices [B])``.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import torch

from ..runtime.atomic import torch_load
from ..runtime.memory import check_fits
from .folders import decode_image, decode_views

__all__ = [
    "TensorSource",
    "FolderSource",
    "open_source",
    "open_train_source",
    "read_images",
    "default_workers",
    "loader_workers",
    "load_prepared",
    "data_digest",
    "split_digest",
]


# ------------------------------------------------------------------ sources


def _chunks(order, batch_size: int, drop_last: bool, device=None) -> list[torch.Tensor]:
    order = torch.as_tensor(order, dtype=torch.long, device=device)
    n = len(order) - (len(order) % batch_size if drop_last else 0)
    return [order[i : i + batch_size] for i in range(0, n, batch_size)]


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

    def batches(
        self, order, batch_size: int, drop_last: bool = False
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


class _DecodeViews(_Decode):
    """Items ``(index, draws [V, D])``: the ``V`` views of :func:`decode_views`."""

    def __init__(self, root: Path, files: list[str], labels: torch.Tensor, size: int, scale, ratio):
        super().__init__(root, files, labels, size)
        self.scale, self.ratio = tuple(scale), tuple(ratio)

    def __getitem__(self, item):
        i, draws = item
        return decode_views(self.root / self.files[i], self.size, draws, self.scale, self.ratio), self.labels[i], i


class _WithDraws:
    """A batch sampler: each chunk of indices paired, row by row, with the next
    draws of an iterator (made as the loader asks for the batch)."""

    def __init__(self, chunks: list[list[int]], draws):
        self.chunks, self.draws = chunks, draws

    def __len__(self) -> int:
        return len(self.chunks)

    def __iter__(self):
        for chunk, draws in zip(self.chunks, self.draws):
            yield list(zip(chunk, draws))


def default_workers() -> int:
    """Decoding processes when none are given: the CPUs this process may run
    on (its affinity, which SLURM and taskset restrict), at most 8."""
    return min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


def loader_workers(cpus: int) -> int:
    """Decoding processes for a training process given ``cpus`` CPUs: all but
    the one that runs the step (none below two: it decodes in-process)."""
    return cpus - 1 if cpus > 1 else 0


def _ignore_interrupt(worker: int) -> None:
    """A decoding worker ignores Ctrl-C: the training process, which the
    terminal interrupts too, decides when to stop and ends its workers."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)


class FolderSource:
    """Images streamed from files under ``root``: each decoded as RGB, resized
    (shorter side) and centre-cropped to ``image_size`` (:func:`decode_image`)
    in ``workers`` DataLoader processes (0: in this process)."""

    def __init__(self, root: str | os.PathLike, files: list[str], labels, image_size: int, workers: int | None = None):
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

    def batches(
        self, order, batch_size: int, drop_last: bool = False
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """As :meth:`TensorSource.batches`, on the CPU (pinned when CUDA is
        available), in order; the workers decode ahead."""
        chunks = [c.tolist() for c in _chunks(order, batch_size, drop_last)]
        if not chunks:
            return
        loader = torch.utils.data.DataLoader(
            _Decode(self.root, self.files, self.labels, self.image_size),
            batch_sampler=chunks,
            num_workers=min(self.workers, len(chunks)),
            pin_memory=torch.cuda.is_available(),
            worker_init_fn=_ignore_interrupt,
        )
        yield from loader

    def view_batches(
        self, order, batch_size: int, draws, scale=(0.2, 1.0), ratio=(3 / 4, 4 / 3)
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Training views, cropped as they are decoded: for each full batch of
        ``order``, ``(uint8 views [B, V, 3, S, S], labels [B], indices [B])``,
        each image's ``V`` random-resized crops taken on the full decoded
        image (:func:`decode_views`) by the next item of ``draws`` (float64
        ``[B, V, D]`` per batch, :func:`negatives.data.crops.crop_draws`).
        Only the images of ``order`` are decoded (a process's own slice)."""
        chunks = [c.tolist() for c in _chunks(order, batch_size, drop_last=True)]
        if not chunks:
            return
        loader = torch.utils.data.DataLoader(
            _DecodeViews(self.root, self.files, self.labels, self.image_size, scale, ratio),
            batch_sampler=_WithDraws(chunks, iter(draws)),
            num_workers=min(self.workers, len(chunks)),
            pin_memory=torch.cuda.is_available(),
            worker_init_fn=_ignore_interrupt,
        )
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
        return FolderSource(data["root"], data[f"{split}_files"], data[f"{split}_labels"], data["image_size"], workers)
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


def load_prepared(path: str | os.PathLike) -> dict:
    """Load ``data.pt`` (see docs/INTERFACES.md); a missing or damaged file is
    one error naming it and how to rebuild it."""
    if os.path.isfile(path):  # torch.load reads it whole
        size = os.path.getsize(path)
        check_fits(
            size,
            f"{path} ({size:,} bytes)",
            "run this where there is more memory, or prepare the dataset "
            "with storage: stream (image folders) or fewer train_images / test_images",
        )
    data = torch_load(path, "prepared dataset (data.pt)", f"build it again (snakemake {path})")
    if not isinstance(data, dict) or "classes" not in data:
        raise ValueError(f"{path} is not a prepared dataset (data.pt); delete it and build it again (snakemake {path})")
    return data


# ------------------------------------------------------------------ identity

#: what :func:`split_digest` hashes of each split: the images (or, streamed,
#: the image files' names) and the labels, in their order
_SPLIT_KEYS = {
    "train": ("train_images", "train_files", "train_labels", "unlabeled_images"),
    "test": ("test_images", "test_files", "test_labels"),
}


def _feed(h, key: str, value) -> None:
    h.update(key.encode() + b"\0")
    if isinstance(value, torch.Tensor):
        t = value.detach().cpu().contiguous()
        h.update(f"{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    else:
        h.update(repr(value).encode())
    h.update(b"\0")


def split_digest(data: dict, split: str) -> str:
    """The identity of one split of a prepared dataset: a SHA-256 (16 hex
    digits) of its images, their labels and their order, with the dataset's
    name, storage and classes.  A streamed split is hashed by its image
    files' names (relative to the root), not their pixels: reading every
    file of an ImageNet-sized folder would cost as much as an epoch."""
    h = hashlib.sha256()
    for key in ("dataset", "storage", "classes", "image_size"):
        _feed(h, key, data.get(key))
    for key in _SPLIT_KEYS[split]:
        if key in data:
            _feed(h, key, data[key])
    return h.hexdigest()[:16]


def data_digest(data: dict) -> dict[str, str]:
    """``{"train": ..., "test": ...}``: the :func:`split_digest` of both splits,
    recorded in ``data.pt`` when it is written (computed here for one written
    before).  A run records its training split's, and is resumed, evaluated
    and analysed only on data with the same digests."""
    recorded = data.get("digest")
    if isinstance(recorded, dict) and set(recorded) == {"train", "test"}:
        return dict(recorded)
    return {split: split_digest(data, split) for split in ("train", "test")}
