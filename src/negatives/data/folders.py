"""Image-folder datasets: indexes of file names and labels, decoded later.

=================  =================================================================
ImageNet           ``train/<wnid>/*.JPEG``, ``val/<wnid>/*.JPEG``
Tiny-ImageNet      ``wnids.txt``, ``words.txt``, ``train/<wnid>/images/*.JPEG``,
                   ``val/images/*.JPEG`` + ``val/val_annotations.txt``
=================  =================================================================

Each index is a :class:`~negatives.data.readers.FolderIndex`; each
``check_*`` function is the cheap part of its index (folder names), run
before any job starts.  Every error names the file or folder at fault.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .readers import FolderIndex

__all__ = [
    "IMAGE_SUFFIXES",
    "UnreadableImage",
    "index_imagenet",
    "index_tiny_imagenet",
    "decode_image",
    "is_wnid",
    "check_imagenet",
    "check_tiny_imagenet",
]

IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png")


def is_wnid(name: str) -> bool:
    """``'n01440764'``: ``n`` and the 8-digit WordNet 3.0 noun offset."""
    return len(name) == 9 and name[0] == "n" and name[1:].isdigit()


def _images(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: image folder does not exist")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise FileNotFoundError(f"{folder}: no images (*.JPEG, *.jpg, *.png)")
    return files


def _wnid_dirs(folder: Path) -> list[str]:
    """Sorted class folders of ``folder``; every one must be named by a wnid."""
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: folder does not exist (expected one sub-folder per wnid)")
    names = sorted(p.name for p in folder.iterdir() if p.is_dir())
    if not names:
        raise FileNotFoundError(f"{folder}: no class folders (expected one per wnid, e.g. n01440764/)")
    bad = [n for n in names if not is_wnid(n)]
    if bad:
        raise ValueError(
            f"{folder / bad[0]}: class folder not named by an ImageNet wnid "
            "('n' and 8 digits, e.g. n01440764): it has no WordNet synset"
        )
    return names


def _words(path: Path, wnids: list[str]) -> list[str]:
    """Readable class names: the first of the words listed per wnid in
    ``path`` (``words.txt`` / ``LOC_synset_mapping.txt``), else the wnid;
    made unique by appending the wnid where two classes share a name."""
    table = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            wnid, _, words = line.replace("\t", " ", 1).partition(" ")
            if wnid:
                table[wnid] = words.split(",")[0].strip() or wnid
    names = [table.get(w, w) for w in wnids]
    return [f"{n} ({w})" if names.count(n) > 1 else n for n, w in zip(names, wnids)]


def _relative(files: list[Path], root: Path) -> list[str]:
    return [str(f.relative_to(root)) for f in files]


def check_imagenet(root: str | os.PathLike) -> list[str]:
    """``train/`` and ``val/`` with wnid-named class folders; returns the wnids."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"data directory {root} for imagenet does not exist")
    wnids = _wnid_dirs(root / "train")
    extra = sorted(set(_wnid_dirs(root / "val")) - set(wnids))
    if extra:
        raise ValueError(f"{root / 'val' / extra[0]}: class folder has no counterpart in {root / 'train'}")
    return wnids


def index_imagenet(root: str | os.PathLike) -> FolderIndex:
    """ImageNet (ILSVRC-2012) in the usual layout ``train/<wnid>/*.JPEG`` and
    ``val/<wnid>/*.JPEG``; classes are the sorted wnids of ``train/`` (names
    from ``LOC_synset_mapping.txt`` when the root has it)."""
    root = Path(root)
    wnids = check_imagenet(root)
    split = {}
    for name in ("train", "val"):
        files, labels = [], []
        for i, w in enumerate(wnids):
            if name == "val" and not (root / "val" / w).is_dir():
                continue
            found = _images(root / name / w)
            files += found
            labels += [i] * len(found)
        split[name] = _relative(files, root), np.asarray(labels, dtype=np.int64)
    return FolderIndex(
        root, *split["train"], *split["val"], wnids=wnids, classes=_words(root / "LOC_synset_mapping.txt", wnids)
    )


def _tiny_wnids(root: Path) -> list[str]:
    path = root / "wnids.txt"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing (Tiny-ImageNet lists its 200 wnids there)")
    wnids = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    bad = [w for w in wnids if not is_wnid(w)]
    if bad:
        raise ValueError(f"{path}: {bad[0]!r} is not an ImageNet wnid ('n' and 8 digits): it has no WordNet synset")
    return sorted(wnids)


def check_tiny_imagenet(root: str | os.PathLike) -> list[str]:
    """``wnids.txt``, ``train/<wnid>/images/``, ``val/images/`` and
    ``val/val_annotations.txt``; returns the sorted wnids."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"data directory {root} for tiny-imagenet does not exist")
    wnids = _tiny_wnids(root)
    for path in [root / "train" / w / "images" for w in wnids] + [root / "val" / "images"]:
        if not path.is_dir():
            raise FileNotFoundError(f"{path}: image folder does not exist")
    if not (root / "val" / "val_annotations.txt").is_file():
        raise FileNotFoundError(f"{root / 'val' / 'val_annotations.txt'}: missing (the labels of val/images)")
    return wnids


def index_tiny_imagenet(root: str | os.PathLike) -> FolderIndex:
    """Tiny-ImageNet-200: ``train/<wnid>/images/*.JPEG`` (500 per class) and
    ``val/images/*.JPEG`` labelled by ``val/val_annotations.txt`` (the test
    split has no labels; val is used as the test split).  Classes are the
    sorted wnids of ``wnids.txt``, named by ``words.txt``."""
    root = Path(root)
    wnids = check_tiny_imagenet(root)
    index = {w: i for i, w in enumerate(wnids)}
    train, train_labels = [], []
    for i, w in enumerate(wnids):
        found = _images(root / "train" / w / "images")
        train += found
        train_labels += [i] * len(found)
    annotations = root / "val" / "val_annotations.txt"
    test, test_labels = [], []
    for n, line in enumerate(annotations.read_text().splitlines(), 1):
        if not line.strip():
            continue
        name, wnid = line.split("\t")[:2]
        if wnid not in index:
            raise ValueError(f"{annotations}:{n}: {wnid!r} is not listed in {root / 'wnids.txt'}")
        path = root / "val" / "images" / name
        if not path.is_file():
            raise FileNotFoundError(f"{annotations}:{n}: {path} does not exist")
        test.append(path)
        test_labels.append(index[wnid])
    if not test:
        raise ValueError(f"{annotations}: no labelled images")
    return FolderIndex(
        root,
        _relative(train, root),
        np.asarray(train_labels, dtype=np.int64),
        _relative(test, root),
        np.asarray(test_labels, dtype=np.int64),
        wnids=wnids,
        classes=_words(root / "words.txt", wnids),
    )


class UnreadableImage(ValueError):
    """An image file of a folder that is missing, unreadable or not an image.

    Raised in a DataLoader worker, torch raises it again in the main process
    made from its text "Caught UnreadableImage ... Original Traceback ...";
    only the original message (that text's last line) is kept."""

    def __init__(self, message: str):
        if message.startswith(f"Caught {type(self).__name__} "):
            message = message.rstrip().splitlines()[-1].partition(": ")[2]
        super().__init__(message)


def _open_rgb(path: str | os.PathLike):
    """The image at ``path`` as RGB (grayscale and CMYK JPEGs included); a
    file that is missing, unreadable or not an image is an
    :class:`UnreadableImage` naming it."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except FileNotFoundError:
        raise UnreadableImage(
            f"{path}: no such image; the folder changed after the dataset was prepared: put the "
            "file back, or prepare the dataset again"
        ) from None
    except PermissionError as e:
        raise UnreadableImage(f"{path}: cannot be read ({e.strerror}); make it readable (chmod a+r)") from None
    except (UnidentifiedImageError, OSError) as e:
        raise UnreadableImage(
            f"{path}: cannot decode the image ({e}); replace it with a good copy, or remove it "
            "and prepare the dataset again"
        ) from None


def decode_image(path: str | os.PathLike, size: int):
    """One image file -> uint8 tensor ``[3, size, size]``: decoded as RGB
    (grayscale and CMYK JPEGs included), the shorter side resized to ``size``
    (bilinear, antialiased; unchanged when it already is ``size``), then the
    centre ``size x size`` crop.  Raises ``ValueError`` naming the file when
    it is not an image."""
    import torchvision.transforms.functional as TF

    im = _open_rgb(path)
    if min(im.size) != size:
        im = TF.resize(im, size, interpolation=TF.InterpolationMode.BILINEAR, antialias=True)
    return TF.pil_to_tensor(TF.center_crop(im, [size, size]))


def decode_views(path: str | os.PathLike, size: int, draws, scale=(0.2, 1.0), ratio=(3 / 4, 4 / 3)):
    """One image file -> uint8 ``[V, 3, size, size]``: decoded as RGB at its own
    size, then for each of the ``V`` rows of ``draws`` (float64
    ``[V, D]``, :func:`negatives.data.crops.crop_draws`) the
    RandomResizedCrop box they give on the full image
    (:func:`negatives.data.crops.boxes_from_draws`), resized to ``size x
    size`` (bilinear, antialiased) -- the official pipeline's
    ``RandomResizedCrop(size, scale)`` on the decoded image, so a crop may
    reach the image's borders.  Raises ``ValueError`` naming the file when
    it is not an image."""
    import torch
    import torchvision.transforms.functional as TF

    from .crops import boxes_from_draws

    im = _open_rgb(path)
    width, height = im.size
    boxes = boxes_from_draws(torch.as_tensor(draws, dtype=torch.float64), height, width, scale, ratio)
    return torch.stack(
        [
            TF.pil_to_tensor(
                TF.resized_crop(
                    im, *box.tolist(), [size, size], interpolation=TF.InterpolationMode.BILINEAR, antialias=True
                )
            )
            for box in boxes
        ]
    )
