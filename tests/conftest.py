"""Shared test helpers: tiny datasets in the exact on-disk formats."""

from __future__ import annotations

import gzip
import struct
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]

# the tests sit in folders laid out like the library; a test file imports another's helpers by its name,
# wherever it sits (the names are unique: tests/test_layout.py checks it)
for _folder in sorted(p for p in Path(__file__).parent.iterdir() if p.is_dir() and not (p / "__init__.py").exists()):
    if str(_folder) not in sys.path:
        sys.path.append(str(_folder))


def written(folder: Path) -> list[str]:
    """The files in ``folder``, each output's check file (``.NAME.sha256``)
    folded into it: fails on any other hidden file (a temporary one left).
    A finished run's ``.finished/`` (the second names of its checkpoint and
    log) is part of it: its files must be those outputs, hard links to them.
    A run's ``snapshots/`` is checked the same way and left out."""
    folder = Path(folder)
    if (folder / "snapshots").is_dir():
        written(folder / "snapshots")
    names = sorted(p.name for p in folder.iterdir() if p.name not in (".finished", "snapshots"))
    outputs = [n for n in names if not n.startswith(".")]
    assert [n for n in names if n.startswith(".")] == sorted(f".{n}.sha256" for n in outputs), names
    kept = folder / ".finished"
    if kept.exists():
        assert sorted(p.name for p in kept.iterdir()) == ["checkpoint.pt", "train_log.csv"]
        assert all((kept / n).stat().st_ino == (folder / n).stat().st_ino for n in ("checkpoint.pt", "train_log.csv"))
    return outputs


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


@pytest.fixture(scope="module")
def data_path(fashion_root, tmp_path_factory) -> Path:
    """``data.pt`` prepared from :func:`fashion_root`."""
    from negatives.data import prepare

    return prepare("fashion-mnist", fashion_root, tmp_path_factory.mktemp("prepared"))


# ------------------------------------------------ the real datasets' formats

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
STL10_CLASSES = ["airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck"]


def _cifar_pickle(path: Path, obj: dict) -> None:
    """Like the originals: a Python 2 style pickle (protocol 2) with bytes keys."""
    import pickle

    with open(path, "wb") as f:
        pickle.dump({k.encode(): v for k, v in obj.items()}, f, protocol=2)


def fake_cifar10(root: Path, per_batch: int = 4, seed: int = 0) -> dict:
    """``root/cifar-10-batches-py`` with 5 train batches of ``per_batch``
    images and a test batch; returns the arrays written (``train_images``
    uint8 [N, 3, 32, 32], ``train_labels`` ..., ``classes``)."""
    rng = np.random.default_rng(seed)
    base = root / "cifar-10-batches-py"
    base.mkdir(parents=True, exist_ok=True)
    out = {"train_images": [], "train_labels": []}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        images = rng.integers(0, 256, size=(per_batch, 3, 32, 32), dtype=np.uint8)
        labels = rng.integers(0, 10, size=per_batch).tolist()
        _cifar_pickle(
            base / name,
            {
                "batch_label": name,
                "labels": labels,
                "data": images.reshape(per_batch, -1),
                "filenames": [f"{name}_{i}.png" for i in range(per_batch)],
            },
        )
        split = "test" if name == "test_batch" else "train"
        out.setdefault(f"{split}_images", []).append(images)
        out.setdefault(f"{split}_labels", []).append(np.asarray(labels))
    _cifar_pickle(
        base / "batches.meta", {"label_names": CIFAR10_CLASSES, "num_cases_per_batch": per_batch, "num_vis": 3072}
    )
    result = {k: np.concatenate(v) for k, v in out.items()}
    result["classes"] = list(CIFAR10_CLASSES)
    return result


def cifar100_class_names() -> tuple[list[str], list[str]]:
    """(fine, coarse) class names, as resources/cifar100{,-coarse}.tsv list them."""
    res = ROOT / "src" / "negatives" / "data" / "resources"
    names = [
        [line.split("\t")[1] for line in (res / f).read_text().splitlines()[1:] if line.strip()]
        for f in ("cifar100.tsv", "cifar100-coarse.tsv")
    ]
    return names[0], names[1]


def fake_cifar100(root: Path, n_train: int = 6, n_test: int = 4, seed: int = 0) -> dict:
    """``root/cifar-100-python/{train,test,meta}``; returns what was written."""
    rng = np.random.default_rng(seed)
    base = root / "cifar-100-python"
    base.mkdir(parents=True, exist_ok=True)
    fine, coarse = cifar100_class_names()
    out = {"classes_fine": fine, "classes_coarse": coarse}
    for split, n in (("train", n_train), ("test", n_test)):
        images = rng.integers(0, 256, size=(n, 3, 32, 32), dtype=np.uint8)
        fl, cl = rng.integers(0, 100, size=n), rng.integers(0, 20, size=n)
        _cifar_pickle(
            base / split,
            {
                "filenames": [f"{i}.png" for i in range(n)],
                "batch_label": split,
                "fine_labels": fl.tolist(),
                "coarse_labels": cl.tolist(),
                "data": images.reshape(n, -1),
            },
        )
        out.update({f"{split}_images": images, f"{split}_fine": fl, f"{split}_coarse": cl})
    _cifar_pickle(base / "meta", {"fine_label_names": fine, "coarse_label_names": coarse})
    return out


def fake_stl10(root: Path, n_train: int = 5, n_test: int = 3, n_unlabeled: int = 2, seed: int = 0) -> dict:
    """``root/stl10_binary`` with the binaries (images column-major 3x96x96,
    labels 1..10); returns the images row-major and the labels 0..9."""
    rng = np.random.default_rng(seed)
    base = root / "stl10_binary"
    base.mkdir(parents=True, exist_ok=True)
    out = {"classes": list(STL10_CLASSES)}
    for split, n in (("train", n_train), ("test", n_test), ("unlabeled", n_unlabeled)):
        images = rng.integers(0, 256, size=(n, 3, 96, 96), dtype=np.uint8)
        images.transpose(0, 1, 3, 2).tofile(base / f"{split}_X.bin")  # column-major per channel
        out[f"{split}_images"] = images
        if split != "unlabeled":
            labels = rng.integers(0, 10, size=n)
            (labels + 1).astype(np.uint8).tofile(base / f"{split}_y.bin")
            out[f"{split}_labels"] = labels
    (base / "class_names.txt").write_text("\n".join(STL10_CLASSES) + "\n")
    return out


#: two ImageNet classes: tench and goldfish (WordNet 3.0 noun offsets)
IMAGENET_WNIDS = {"n01440764": "tench.n.01", "n01443537": "goldfish.n.01"}


def _write_jpeg(path: Path, rng, size=(20, 16), colour=0) -> None:
    from PIL import Image

    a = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    a[..., colour] = 255  # a little class structure
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(a).save(path, format="JPEG", quality=90)


def fake_imagenet(root: Path, per_class: int = 3, seed: int = 0, wnids=tuple(IMAGENET_WNIDS)) -> Path:
    """``root/train/<wnid>/*.JPEG`` and ``root/val/<wnid>/*.JPEG``: JPEGs of
    20x16 (and 16x24 for every third) pixels."""
    rng = np.random.default_rng(seed)
    for split in ("train", "val"):
        for c, wnid in enumerate(wnids):
            for i in range(per_class):
                size = (16, 24) if i % 3 == 2 else (20, 16)
                _write_jpeg(root / split / wnid / f"{wnid}_{i}.JPEG", rng, size, colour=c % 3)
    (root / "LOC_synset_mapping.txt").write_text(
        "n01440764 tench, Tinca tinca\nn01443537 goldfish, Carassius auratus\n"
    )
    return root


def fake_tiny_imagenet(root: Path, per_class: int = 3, seed: int = 0) -> Path:
    """Tiny-ImageNet-200's layout with the two wnids of :data:`IMAGENET_WNIDS`
    (listed in reverse order in wnids.txt) and 64x64 JPEGs."""
    rng = np.random.default_rng(seed)
    wnids = list(IMAGENET_WNIDS)
    root.mkdir(parents=True, exist_ok=True)
    (root / "wnids.txt").write_text("\n".join(reversed(wnids)) + "\n")
    (root / "words.txt").write_text(
        "n01440764\ttench, Tinca tinca\nn01443537\tgoldfish, Carassius auratus\nn00001740\tentity\n"
    )
    lines = []
    for c, wnid in enumerate(wnids):
        for i in range(per_class):
            _write_jpeg(root / "train" / wnid / "images" / f"{wnid}_{i}.JPEG", rng, (64, 64), colour=c)
            name = f"val_{c * per_class + i}.JPEG"
            _write_jpeg(root / "val" / "images" / name, rng, (64, 64), colour=c)
            lines.append(f"{name}\t{wnid}\t0\t0\t63\t63")
        (root / "train" / wnid / f"{wnid}_boxes.txt").write_text("")
    (root / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    (root / "test" / "images").mkdir(parents=True)
    return root


@pytest.fixture(scope="session")
def wordnet_reader(tmp_path_factory):
    """NLTK's reader over Debian's WordNet 3.0, prepared in a scratch directory
    (skips when Debian's wordnet-base / wordnet-sense-index are missing)."""
    from negatives.data import wordnet as wnmod

    if wnmod._missing_debian_files(wnmod.DEBIAN_DIR):
        pytest.skip(
            f"Debian's WordNet is not installed in {wnmod.DEBIAN_DIR} "
            "(apt-get install wordnet-base wordnet-sense-index, which ./test.sh does as root)"
        )
    return wnmod.load_wordnet(wnmod.wordnet_dir(tmp_path_factory.mktemp("results"), download=False))
