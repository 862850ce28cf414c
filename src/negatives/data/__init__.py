"""Datasets: the readers of every on-disk format, the registry of dataset names,
the one prepared format every later stage reads, the batched augmentations,
and the WordNet class hierarchy.

:mod:`.readers` (CIFAR, STL-10, image folders), :mod:`.datasets` (the
registry, class maps, Fashion-MNIST), :mod:`.prepare` (``data.pt``),
:mod:`.sources` (reading it batch by batch), :mod:`.augment` (MoCo v2's
aug+ on batches), :mod:`.wordnet` (class similarity).
"""

from .datasets import DATASETS, Dataset, check_root, class_map, read_fashion_mnist, read_idx
from .prepare import STORAGES, balanced_subset, channel_stats, prepare
from .readers import FolderIndex, RawDataset
from .sources import FolderSource, TensorSource, load_prepared, open_source, open_train_source, read_images

__all__ = [
    "DATASETS",
    "Dataset",
    "STORAGES",
    "RawDataset",
    "FolderIndex",
    "read_idx",
    "read_fashion_mnist",
    "check_root",
    "class_map",
    "balanced_subset",
    "channel_stats",
    "prepare",
    "load_prepared",
    "TensorSource",
    "FolderSource",
    "open_source",
    "open_train_source",
    "read_images",
]
