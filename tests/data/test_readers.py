"""Readers of the real datasets' on-disk formats (negatives.readers), the
prepared format and the in-memory / streamed sources (negatives.data): exact
pixels, labels and class names from tiny files written in each format, every
class on a WordNet synset, and errors that name the file at fault."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import (
    CIFAR10_CLASSES,
    IMAGENET_WNIDS,
    STL10_CLASSES,
    cifar100_class_names,
    fake_cifar10,
    fake_cifar100,
    fake_imagenet,
    fake_stl10,
    fake_tiny_imagenet,
)
from PIL import Image

from negatives import data
from negatives.config import ConfigError, check_config
from negatives.data import folders, readers
from negatives.data.wordnet import check_synsets

ROOT = Path(__file__).resolve().parents[2]
RESOURCES = ROOT / "src" / "negatives" / "data" / "resources"


def classes_tsv(out: Path) -> list[list[str]]:
    return [line.split("\t") for line in (out / "classes.tsv").read_text().splitlines()]


# --------------------------------------------------------------------- CIFAR


def test_cifar10_pixels_labels_classes(tmp_path):
    written = fake_cifar10(tmp_path)
    for root in (tmp_path, tmp_path / "cifar-10-batches-py"):  # torchvision's layout, or the folder itself
        raw = readers.read_cifar10(root)
        assert raw.train_images.dtype == np.uint8 and raw.train_images.shape == (20, 3, 32, 32)
        assert np.array_equal(raw.train_images, written["train_images"])  # batches 1..5 in order
        assert np.array_equal(raw.train_labels, written["train_labels"]) and raw.train_labels.dtype == np.int64
        assert np.array_equal(raw.test_images, written["test_images"])
        assert np.array_equal(raw.test_labels, written["test_labels"])
        assert raw.classes == CIFAR10_CLASSES


def test_cifar10_pixel_layout_is_channel_planes(tmp_path):
    """``data`` rows are 1024 red, 1024 green, 1024 blue values, each plane row-major."""
    fake_cifar10(tmp_path)
    path = tmp_path / "cifar-10-batches-py" / "test_batch"
    batch = pickle.load(open(path, "rb"), encoding="bytes")
    batch[b"data"][0] = np.arange(3072) % 256
    pickle.dump(batch, open(path, "wb"), protocol=2)
    img = readers.read_cifar10(tmp_path).test_images[0]
    assert img[0, 0, 0] == 0 and img[0, 0, 1] == 1 and img[0, 1, 0] == 32 and img[1, 0, 0] == 1024 % 256
    assert img[2, 31, 31] == 3071 % 256


@pytest.mark.parametrize("labels", ["fine", "coarse"])
def test_cifar100_fine_and_coarse(tmp_path, labels):
    written = fake_cifar100(tmp_path)
    raw = readers.read_cifar100(tmp_path, labels=labels)
    assert np.array_equal(raw.train_images, written["train_images"])
    assert np.array_equal(raw.test_images, written["test_images"])
    assert np.array_equal(raw.train_labels, written[f"train_{labels}"])
    assert np.array_equal(raw.test_labels, written[f"test_{labels}"])
    assert raw.classes == written[f"classes_{labels}"] and len(raw.classes) == (100 if labels == "fine" else 20)
    assert raw.class_map == ("cifar100" if labels == "fine" else "cifar100-coarse")


def test_cifar100_bad_label_kind(tmp_path):
    fake_cifar100(tmp_path)
    with pytest.raises(ValueError, match="datasets.cifar100.labels: 'medium'; allowed: fine, coarse"):
        readers.read_cifar100(tmp_path, labels="medium")


def test_cifar_missing_file_is_named(tmp_path):
    fake_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(FileNotFoundError, match=r"cifar-10-batches-py lacks data_batch_3 \(CIFAR-10"):
        readers.read_cifar10(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"lacks data_batch_3 .*cifar-10-batches-py/, or set datasets.cifar10"):
        data.check_root("cifar10", tmp_path)


def test_cifar_truncated_pickle_is_named(tmp_path):
    fake_cifar10(tmp_path)
    path = tmp_path / "cifar-10-batches-py" / "data_batch_2"
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(ValueError, match=r"data_batch_2: not a complete CIFAR python pickle"):
        readers.read_cifar10(tmp_path)


def test_cifar_pickle_cannot_run_code(tmp_path):
    fake_cifar100(tmp_path)

    class Evil:
        def __reduce__(self):
            return (shutil.rmtree, (str(tmp_path),))

    pickle.dump({b"data": Evil()}, open(tmp_path / "cifar-100-python" / "test", "wb"), protocol=2)
    with pytest.raises(ValueError, match=r"test: not a complete CIFAR python pickle .*shutil.rmtree is not allowed"):
        readers.read_cifar100(tmp_path)
    assert (tmp_path / "cifar-100-python" / "meta").exists()


def test_cifar_wrong_shape_is_named(tmp_path):
    fake_cifar10(tmp_path)
    path = tmp_path / "cifar-10-batches-py" / "test_batch"
    batch = pickle.load(open(path, "rb"), encoding="bytes")
    batch[b"data"] = batch[b"data"][:, :3000]
    pickle.dump(batch, open(path, "wb"), protocol=2)
    with pytest.raises(ValueError, match=r"test_batch: 'data' has shape \[4, 3000\], expected \[N, 3072\]"):
        readers.read_cifar10(tmp_path)


# -------------------------------------------------------------------- STL-10


def test_stl10_pixels_labels_classes(tmp_path):
    written = fake_stl10(tmp_path)
    raw = readers.read_stl10(tmp_path)
    assert raw.train_images.shape == (5, 3, 96, 96) and raw.train_images.flags["C_CONTIGUOUS"]
    assert np.array_equal(raw.train_images, written["train_images"])  # column-major on disk, row-major here
    assert np.array_equal(raw.test_images, written["test_images"])
    assert np.array_equal(raw.train_labels, written["train_labels"])  # 1..10 on disk -> 0..9
    assert np.array_equal(raw.test_labels, written["test_labels"])
    assert raw.classes == STL10_CLASSES and raw.unlabeled_images is None
    raw = readers.read_stl10(tmp_path, unlabeled=True)
    assert np.array_equal(raw.unlabeled_images, written["unlabeled_images"])


def test_stl10_column_major(tmp_path):
    """Byte ``k`` of a channel is pixel (row k % 96, column k // 96)."""
    fake_stl10(tmp_path)
    path = tmp_path / "stl10_binary" / "test_X.bin"
    raw = np.fromfile(path, dtype=np.uint8)
    raw[: 96 * 96] = 0
    raw[1] = 7  # row 1, column 0
    raw[96] = 9  # row 0, column 1
    raw.tofile(path)
    img = readers.read_stl10_images(path)[0, 0]
    assert img[1, 0] == 7 and img[0, 1] == 9 and img.sum() == 16


def test_stl10_truncated_binary_is_named(tmp_path):
    fake_stl10(tmp_path)
    path = tmp_path / "stl10_binary" / "train_X.bin"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(
        ValueError,
        match=r"train_X.bin: truncated STL-10 image binary \(138140 bytes, not a "
        r"multiple of 27648",
    ):
        readers.read_stl10(tmp_path)
    with pytest.raises(ValueError, match=r"train_X.bin: truncated"):
        data.check_root("stl10", tmp_path)


def test_stl10_label_count_mismatch_is_named(tmp_path):
    fake_stl10(tmp_path)
    (tmp_path / "stl10_binary" / "test_y.bin").write_bytes(b"\x01\x02")
    with pytest.raises(ValueError, match=r"test_y.bin: 2 labels \(one byte each\) for the 3 images of test_X.bin"):
        readers.read_stl10(tmp_path)


def test_stl10_unlabeled_file_required_only_when_asked(tmp_path):
    fake_stl10(tmp_path)
    (tmp_path / "stl10_binary" / "unlabeled_X.bin").unlink()
    readers.read_stl10(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"stl10_binary lacks unlabeled_X.bin"):
        readers.read_stl10(tmp_path, unlabeled=True)


# ------------------------------------------------------------- image folders


def _decoded(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB")).transpose(2, 0, 1)


def test_imagenet_folder_index(tmp_path):
    fake_imagenet(tmp_path)
    ix = folders.index_imagenet(tmp_path)
    assert ix.wnids == list(IMAGENET_WNIDS) and ix.classes == ["tench", "goldfish"]
    assert ix.train_files == [f"train/{w}/{w}_{i}.JPEG" for w in IMAGENET_WNIDS for i in range(3)]
    assert ix.test_files == [f"val/{w}/{w}_{i}.JPEG" for w in IMAGENET_WNIDS for i in range(3)]
    assert ix.train_labels.tolist() == ix.test_labels.tolist() == [0, 0, 0, 1, 1, 1]


def test_decode_image_exact_pixels_resize_and_crop(tmp_path):
    fake_imagenet(tmp_path)
    path = tmp_path / "train" / "n01440764" / "n01440764_0.JPEG"  # 20 wide, 16 high
    x = folders.decode_image(path, 16)
    assert x.dtype == torch.uint8 and x.shape == (3, 16, 16)
    assert np.array_equal(x.numpy(), _decoded(path)[:, :, 2:18])  # shorter side already 16: centre crop only
    tall = tmp_path / "train" / "n01440764" / "n01440764_2.JPEG"  # 16 wide, 24 high
    assert np.array_equal(folders.decode_image(tall, 16).numpy(), _decoded(tall)[:, 4:20, :])
    assert folders.decode_image(path, 8).shape == (3, 8, 8)  # resized, then cropped
    gray = tmp_path / "gray.png"
    Image.fromarray(np.full((10, 10), 77, dtype=np.uint8)).save(gray)
    assert folders.decode_image(gray, 10).unique().tolist() == [77]  # grayscale -> RGB
    bad = tmp_path / "bad.JPEG"
    bad.write_bytes(b"not an image")
    with pytest.raises(ValueError, match=r"bad.JPEG: cannot decode the image"):
        folders.decode_image(bad, 8)


def test_imagenet_class_without_synset_is_named(tmp_path, wordnet_reader):
    fake_imagenet(tmp_path)
    shutil.copytree(tmp_path / "train" / "n01440764", tmp_path / "train" / "goldfish")
    with pytest.raises(
        ValueError, match=r"train/goldfish: class folder not named by an ImageNet wnid .*no WordNet synset"
    ):
        data.check_root("imagenet", tmp_path, wordnet=wordnet_reader)
    shutil.rmtree(tmp_path / "train" / "goldfish")
    shutil.copytree(tmp_path / "train" / "n01440764", tmp_path / "train" / "n00000001")  # wnid format, no synset
    with pytest.raises(ValueError, match=r"train/n00000001: class n00000001 has no WordNet 3.0 synset"):
        data.check_root("imagenet", tmp_path, wordnet=wordnet_reader)
    with pytest.raises(ValueError, match=r"train/n00000001: class n00000001 has no WordNet 3.0 synset"):
        data.prepare("imagenet", tmp_path, tmp_path / "out", wordnet=wordnet_reader, workers=0)


def test_imagenet_missing_and_extra_folders_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"imagenet' does not exist; put ILSVRC-2012 in ROOT/train"):
        data.check_root("imagenet", tmp_path / "none")
    fake_imagenet(tmp_path)
    shutil.copytree(tmp_path / "val" / "n01440764", tmp_path / "val" / "n01530575")
    with pytest.raises(ValueError, match=r"val/n01530575: class folder has no counterpart in .*train"):
        folders.index_imagenet(tmp_path)
    shutil.rmtree(tmp_path / "val")
    with pytest.raises(FileNotFoundError, match=r"/val: folder does not exist"):
        folders.check_imagenet(tmp_path)


def test_tiny_imagenet_index(tmp_path):
    fake_tiny_imagenet(tmp_path)
    ix = folders.index_tiny_imagenet(tmp_path)
    assert ix.wnids == sorted(IMAGENET_WNIDS) and ix.classes == ["tench", "goldfish"]  # words.txt, first name
    assert ix.train_files[:2] == ["train/n01440764/images/n01440764_0.JPEG", "train/n01440764/images/n01440764_1.JPEG"]
    assert ix.train_labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert ix.test_files == [f"val/images/val_{i}.JPEG" for i in range(6)]
    assert ix.test_labels.tolist() == [0, 0, 0, 1, 1, 1]  # from val_annotations.txt
    x = folders.decode_image(tmp_path / ix.test_files[4], 64)
    assert np.array_equal(x.numpy(), _decoded(tmp_path / ix.test_files[4]))


def test_tiny_imagenet_errors_name_the_file(tmp_path, wordnet_reader):
    fake_tiny_imagenet(tmp_path)
    ann = tmp_path / "val" / "val_annotations.txt"
    ann.write_text(ann.read_text().replace("val_5.JPEG\tn01443537", "val_5.JPEG\tn01530575"))
    with pytest.raises(ValueError, match=r"val_annotations.txt:6: 'n01530575' is not listed in .*wnids.txt"):
        folders.index_tiny_imagenet(tmp_path)
    (tmp_path / "wnids.txt").write_text("n01440764\nn00000001\n")
    with pytest.raises(FileNotFoundError, match=r"train/n00000001/images: image folder does not exist"):
        data.check_root("tiny-imagenet", tmp_path, wordnet=wordnet_reader)
    shutil.copytree(tmp_path / "train" / "n01443537", tmp_path / "train" / "n00000001")
    with pytest.raises(ValueError, match=r"wnids.txt: class n00000001 has no WordNet 3.0 synset"):
        data.check_root("tiny-imagenet", tmp_path, wordnet=wordnet_reader)
    (tmp_path / "wnids.txt").unlink()
    with pytest.raises(FileNotFoundError, match=r"wnids.txt: missing"):
        data.check_root("tiny-imagenet", tmp_path)


# --------------------------------------------------- prepare and class maps


@pytest.mark.parametrize(
    "name,make,options,n_classes",
    [
        ("cifar10", fake_cifar10, {}, 10),
        ("cifar100", fake_cifar100, {}, 100),
        ("cifar100", fake_cifar100, {"labels": "coarse"}, 20),
        ("stl10", fake_stl10, {"unlabeled": True}, 10),
        ("imagenet", fake_imagenet, {"image_size": 16}, 2),
        ("tiny-imagenet", fake_tiny_imagenet, {}, 2),
    ],
)
def test_prepare_maps_every_class_to_a_synset(tmp_path, wordnet_reader, name, make, options, n_classes):
    make(tmp_path / "raw")
    path = data.prepare(name, tmp_path / "raw", tmp_path / "out", wordnet=wordnet_reader, workers=0, **options)
    d = data.load_prepared(path)
    rows = classes_tsv(tmp_path / "out")
    assert rows[0] == ["index", "name", "synset"] and len(rows) == n_classes + 1
    assert [r[1] for r in rows[1:]] == d["classes"] and [int(r[0]) for r in rows[1:]] == list(range(n_classes))
    check_synsets([r[2] for r in rows[1:]], wordnet=wordnet_reader)
    assert d["storage"] == "memory" and d["train_images"].dtype == torch.uint8
    side = {"cifar10": 32, "cifar100": 32, "stl10": 96, "imagenet": 16, "tiny-imagenet": 64}[name]
    assert d["train_images"].shape[1:] == d["test_images"].shape[1:] == (3, side, side)
    if name in ("imagenet", "tiny-imagenet"):
        assert [r[2] for r in rows[1:]] == ["tench.n.01", "goldfish.n.01"]
    if name == "stl10":
        assert d["unlabeled_images"].shape == (2, 3, 96, 96)


def test_every_class_map_is_on_wordnet(wordnet_reader):
    fine, coarse = cifar100_class_names()
    expected = {"cifar10": CIFAR10_CLASSES, "stl10": STL10_CLASSES, "cifar100": fine, "cifar100-coarse": coarse}
    for name, classes in expected.items():
        rows = data.class_map(name)
        assert [r[0] for r in rows] == list(range(len(classes))) and [r[1] for r in rows] == classes, name
        check_synsets([r[2] for r in rows], wordnet=wordnet_reader)
    assert coarse[:3] == ["aquatic_mammals", "fish", "flowers"] and coarse[-1] == "vehicles_2"
    assert len({r[2] for r in data.class_map("cifar100-coarse")}) == 20  # no two superclasses share a synset
    for path in RESOURCES.glob("*.tsv"):
        check_synsets([r[2] for r in data.class_map(path.stem)], wordnet=wordnet_reader)


def test_prepare_cli_takes_the_dataset_settings(tmp_path, wordnet_reader, monkeypatch):
    from negatives.cli import main

    fake_cifar100(tmp_path / "raw")
    main(
        [
            "prepare",
            "--dataset",
            "cifar100",
            "--root",
            str(tmp_path / "raw"),
            "--out",
            str(tmp_path / "out"),
            "--settings",
            json.dumps({"labels": "coarse", "storage": "auto", "stream_above_gb": 8}),
        ]
    )
    assert len(data.load_prepared(tmp_path / "out" / "data.pt")["classes"]) == 20
    with pytest.raises(ValueError, match=r"datasets.cifar10: unknown option\(s\) labels; allowed: none"):
        data.prepare("cifar10", tmp_path / "raw", tmp_path / "out", labels="coarse")


def test_fashion_mnist_prepared_format_unchanged(tmp_path, fashion_root):
    path = data.prepare("fashion-mnist", fashion_root, tmp_path / "out", 40, 20)
    d = data.load_prepared(path)
    assert set(d) == {
        "dataset",
        "storage",
        "settings",
        "digest",
        "train_images",
        "train_labels",
        "test_images",
        "test_labels",
        "classes",
        "mean",
        "std",
    }
    xf = d["train_images"].float().div(255.0)
    assert d["mean"] == xf.mean(dim=(0, 2, 3)).tolist() and d["std"] == xf.std(dim=(0, 2, 3)).tolist()
    assert d["train_images"].shape == (40, 1, 28, 28) and torch.bincount(d["train_labels"]).tolist() == [4] * 10


# ------------------------------------------------------------------ sources


def _batches(source, order, batch_size, drop_last=False):
    return [tuple(t.clone() for t in b) for b in source.batches(order, batch_size, drop_last=drop_last)]


@pytest.mark.parametrize("workers", [0, 2])
def test_memory_and_stream_give_identical_batches(tmp_path, wordnet_reader, workers):
    fake_imagenet(tmp_path / "raw", per_class=4)
    common = dict(wordnet=wordnet_reader, workers=0, image_size=16)
    mem = data.load_prepared(data.prepare("imagenet", tmp_path / "raw", tmp_path / "m", storage="memory", **common))
    stream = data.load_prepared(data.prepare("imagenet", tmp_path / "raw", tmp_path / "s", storage="stream", **common))
    assert stream["storage"] == "stream" and "train_images" not in stream
    assert stream["mean"] == mem["mean"] and stream["std"] == mem["std"]
    assert (tmp_path / "m" / "classes.tsv").read_text() == (tmp_path / "s" / "classes.tsv").read_text()
    a, b = data.open_train_source(mem), data.open_train_source(stream, workers=workers)
    assert isinstance(a, data.TensorSource) and isinstance(b, data.FolderSource)
    assert a.num_images == b.num_images == 8 and a.shape == b.shape == (3, 16, 16)
    order = torch.randperm(8, generator=torch.Generator().manual_seed(0))
    for drop_last in (False, True):
        ba, bb = _batches(a, order, 3, drop_last), _batches(b, order, 3, drop_last)
        assert len(ba) == len(bb) == (2 if drop_last else 3)
        for (xa, ya, ia), (xb, yb, ib) in zip(ba, bb):
            assert xa.dtype == xb.dtype == torch.uint8 and torch.equal(xa, xb)
            assert torch.equal(ya, yb) and torch.equal(ia, ib)
    assert torch.equal(torch.cat([i for _, _, i in ba]), order[:6])
    test_a, test_b = data.open_source(mem, "test"), data.open_source(stream, "test", workers=workers)
    ((xa, ya, _),), ((xb, yb, _),) = _batches(test_a, torch.arange(8), 8), _batches(test_b, torch.arange(8), 8)
    assert torch.equal(xa, xb) and torch.equal(ya, yb) and torch.equal(xa, mem["test_images"])


def test_storage_auto_follows_the_threshold(tmp_path, wordnet_reader):
    fake_tiny_imagenet(tmp_path / "raw")
    # 12 images of 3x64x64 bytes = 147,456 bytes
    small = data.prepare(
        "tiny-imagenet", tmp_path / "raw", tmp_path / "a", stream_above_gb=147456e-9, wordnet=wordnet_reader, workers=0
    )
    big = data.prepare(
        "tiny-imagenet", tmp_path / "raw", tmp_path / "b", stream_above_gb=147455e-9, wordnet=wordnet_reader, workers=0
    )
    assert data.load_prepared(small)["storage"] == "memory" and data.load_prepared(big)["storage"] == "stream"
    with pytest.raises(
        ValueError,
        match=r"datasets.cifar10.storage: stream is only for image folders "
        r"\(imagenet, tiny-imagenet\); allowed: auto, memory",
    ):
        fake_cifar10(tmp_path / "c10")
        data.prepare("cifar10", tmp_path / "c10", tmp_path / "c", storage="stream")


def test_train_source_appends_unlabeled_images(tmp_path):
    written = fake_stl10(tmp_path / "raw")
    d = data.load_prepared(data.prepare("stl10", tmp_path / "raw", tmp_path / "out", unlabeled=True))
    src = data.open_train_source(d)
    assert src.num_images == 7 and src.labels.tolist() == written["train_labels"].tolist() + [-1, -1]
    ((x, y, i),) = _batches(src, torch.tensor([6, 0]), 2)
    assert torch.equal(x[0], torch.from_numpy(written["unlabeled_images"][1])) and y.tolist()[0] == -1
    assert data.open_source(d, "train").num_images == 5  # probes see labelled images only
    with pytest.raises(ValueError, match="split 'val'; allowed: train, test"):
        data.open_source(d, "val")


# ------------------------------------------------------------- check_config


def _config(name: str, root: Path, **entry) -> dict:
    cfg = yaml.safe_load((ROOT / "config.yaml").read_text())
    cfg["dataset"] = name
    cfg["datasets"] = {
        name: {
            "root": str(root),
            "download": False,
            "train_images": 0,
            "test_images": 0,
            "storage": "auto",
            "stream_above_gb": 8,
            **entry,
        }
    }
    if entry.get("unlabeled") is True:  # no labels for the oracle policies of Table 1
        cfg["figures"]["table1"]["removed"] = []
    return cfg


@pytest.mark.parametrize(
    "name,make,entry,spoil,needles",
    [
        (
            "cifar10",
            fake_cifar10,
            {},
            lambda r: (r / "cifar-10-batches-py" / "batches.meta").unlink(),
            ["datasets.cifar10.root:", "lacks batches.meta"],
        ),
        (
            "stl10",
            fake_stl10,
            {"unlabeled": True},
            lambda r: (r / "stl10_binary" / "unlabeled_X.bin").write_bytes(b"\0" * 9),
            ["datasets.stl10.root:", "unlabeled_X.bin: truncated STL-10 image binary (9 bytes"],
        ),
        (
            "imagenet",
            fake_imagenet,
            {},
            lambda r: (r / "train" / "n00000001").mkdir(),
            ["datasets.imagenet.root:", "train/n00000001: class n00000001 has no WordNet 3.0 synset"],
        ),
        (
            "imagenet",
            fake_imagenet,
            {},
            lambda r: (r / "train" / "tinca").mkdir(),
            ["datasets.imagenet.root:", "train/tinca: class folder not named by an ImageNet wnid"],
        ),
    ],
)
def test_check_config_names_the_bad_file(tmp_path, wordnet_reader, name, make, entry, spoil, needles):
    make(tmp_path)
    cfg = _config(name, tmp_path, **entry)
    check_config(cfg)
    spoil(tmp_path)
    with pytest.raises(ConfigError) as err:
        check_config(cfg)
    for needle in needles:
        assert needle in str(err.value), str(err.value)


@pytest.mark.parametrize(
    "name,entry,needle",
    [
        ("cifar10", {"labels": "coarse"}, "datasets.cifar10.labels: does not apply to cifar10 (only to cifar100)"),
        (
            "fashion-mnist",
            {"image_size": 32},
            "datasets.fashion-mnist.image_size: does not apply to fashion-mnist (only to imagenet, tiny-imagenet)",
        ),
        (
            "cifar10",
            {"storage": "stream"},
            "datasets.cifar10.storage: 'stream'; allowed: auto, memory (stream is only for image folders)",
        ),
        (
            "imagenet",
            {"download": True},
            "datasets.imagenet.download: imagenet cannot be downloaded automatically; allowed: false",
        ),
        ("stl10", {"unlabeled": "yes"}, "datasets.stl10.unlabeled: must be bool"),
    ],
)
def test_check_config_dataset_keys(tmp_path, name, entry, needle):
    cfg = _config(name, tmp_path, **entry)
    with pytest.raises(ConfigError) as err:
        check_config(cfg)
    assert str(err.value).startswith(needle), str(err.value)


def test_missing_root_is_a_warning_when_data_checks_are_skipped(tmp_path, monkeypatch):
    cfg = _config("tiny-imagenet", tmp_path / "absent")
    with pytest.raises(ConfigError, match=r"^datasets.tiny-imagenet.root: data directory .*absent .*does not exist"):
        check_config(cfg)
    with pytest.warns(UserWarning, match=r"datasets.tiny-imagenet.root: .*NEGATIVES_SKIP_DATA_CHECK is set"):
        check_config(cfg, check_data=False)
    monkeypatch.setenv("NEGATIVES_SKIP_DATA_CHECK", "1")
    with pytest.warns(UserWarning, match="NEGATIVES_SKIP_DATA_CHECK"):
        check_config(cfg)
    check_config(_config("cifar10", tmp_path / "absent", download=True))  # fetched by the prepare job
