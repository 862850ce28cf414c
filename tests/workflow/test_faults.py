"""Faults a user meets: a damaged or empty classes.tsv or similarity table, a
missing or unreadable image of a streamed folder, swapped image and label
files, a checkpoint whose weights do not match its metadata, sizes that
cannot fit in memory, a folder or a binary file given as --configfile, a
schema error, and Ctrl-C while training.  Each is one line naming the file or
key (no traceback), an exit status, and every existing file left as it was."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import ROOT, fake_imagenet
from test_bad_inputs import TINY, _analyze, _evaluate, _pretrain, _snapshot, files  # noqa: F401 (fixture)

from negatives.cli import main
from negatives.runtime import memory

HUGE = 10**7


def _write(path: Path, data: bytes | str) -> Path:
    path.write_bytes(data if isinstance(data, bytes) else data.encode())
    return path


def _similarity(root: Path, data: Path, text: bytes | str, name: str):
    """``analyze`` with the similarity table ``text``."""
    return _analyze(similarity=str(_write(root.parent / f"{root.name}-{name}", text)), queries=10, negatives=10)(
        root, data
    )


def _classes(root: Path, text: bytes | str, name: str):
    """``similarity`` of the class list ``text``."""
    return [
        "similarity",
        "--classes",
        str(_write(root.parent / f"{root.name}-{name}", text)),
        "--out",
        str(root / "new" / "similarity.tsv"),
    ]


def _table(root: Path) -> str:
    return (root / "data" / "similarity.tsv").read_text()


def _checkpoint(root: Path, name: str, change) -> str:
    """A copy of the finished run's checkpoint, ``change``d (outside ``root``)."""
    state = torch.load(root / "finished" / "checkpoint.pt", weights_only=False)
    change(state)
    path = root.parent / f"{root.name}-{name}.pt"
    torch.save(state, path)
    return str(path)


def _swapped(root: Path) -> Path:
    """A copy of the fake Fashion-MNIST with its training image and label files swapped."""
    swapped = root.parent / f"{root.name}-swapped"
    if not swapped.exists():
        shutil.copytree(root.parent / f"{root.name}-source", swapped)
        images, labels = swapped / "train-images-idx3-ubyte.gz", swapped / "train-labels-idx1-ubyte.gz"
        data = images.read_bytes()
        images.write_bytes(labels.read_bytes())
        labels.write_bytes(data)
    return swapped


def _width(state):
    state["meta"]["settings"]["width"] *= 2


def _one_weight_less(state):
    state["encoder"].pop(next(iter(state["encoder"])))


#: (id, argv builder, the message it must give)
CATALOGUE = [
    (
        "classes.tsv empty",
        lambda root, data: _classes(root, "", "empty.tsv"),
        r"empty\.tsv: empty, not a class list \(classes\.tsv\); prepare the dataset again",
    ),
    (
        "classes.tsv header only",
        lambda root, data: _classes(root, "index\tname\tsynset\n", "header.tsv"),
        r"header\.tsv: a class list \(classes\.tsv\) that lists no classes; prepare the dataset again",
    ),
    (
        "classes.tsv a short row",
        lambda root, data: _classes(root, "index\tname\tsynset\n0\tdog\n", "short.tsv"),
        r"short\.tsv:2: 2 columns, expected 3 \(index, name, synset\)",
    ),
    (
        "classes.tsv no header",
        lambda root, data: _classes(root, "0\tdog\tdog.n.01\n", "headless.tsv"),
        r"headless\.tsv: its first line is not the header",
    ),
    (
        "classes.tsv binary",
        lambda root, data: _classes(root, b"\x00\xff\xfe\x01 PNG", "binary.tsv"),
        r"binary\.tsv: not a text file, so not a class list",
    ),
    (
        "similarity table empty",
        lambda root, data: _similarity(root, data, "", "sim-empty.tsv"),
        r"sim-empty\.tsv: empty, not a class similarity table; build it again",
    ),
    (
        "similarity table header only",
        lambda root, data: _similarity(root, data, _table(root).splitlines()[0], "sim-header.tsv"),
        r"sim-header\.tsv: the rows' class names differ from the header's \(0 rows for 10 classes\)",
    ),
    (
        "similarity table not numbers",
        lambda root, data: _similarity(root, data, _table(root).replace("\t1\n", "\tx\n", 1), "sim-text.tsv"),
        r"sim-text\.tsv:2: 'x' is not a whole number \(a WordNet depth\); build it again",
    ),
    (
        "similarity table a short row",
        lambda root, data: _similarity(root, data, _table(root).replace("\t1\n", "\n", 3), "sim-short.tsv"),
        r"sim-short\.tsv:2: 9 values after the class name, expected 10 \(one per class\)",
    ),
    (
        "similarity table binary",
        lambda root, data: _similarity(root, data, b"\x89PNG\r\n\x1a\n\x00\x00", "sim-bin.tsv"),
        r"sim-bin\.tsv: not a text file, so not a class similarity table",
    ),
    (
        "image and label files swapped",
        lambda root, data: [
            "prepare",
            "--dataset",
            "fashion-mnist",
            "--root",
            str(_swapped(root)),
            "--out",
            str(root / "new"),
        ],
        r"swapped/train-images-idx3-ubyte\.gz: 1-d uint8 IDX data \[64\], expected uint8 images \[N, 28, 28\] "
        r"\(it holds labels: are the image and label files swapped\?\)",
    ),
    (
        "weights wider than the metadata",
        lambda root, data: (
            _evaluate()(root, data)[:3]
            + ["--checkpoint", _checkpoint(root, "wide", _width)]
            + _evaluate()(root, data)[5:]
        ),
        r"wide\.pt: its weights do not fit the network its metadata describes \(size mismatch for .*\); delete it",
    ),
    (
        "a weight missing",
        lambda root, data: (
            _evaluate()(root, data)[:3]
            + ["--checkpoint", _checkpoint(root, "less", _one_weight_less)]
            + _evaluate()(root, data)[5:]
        ),
        r"less\.pt: its weights do not fit the network its metadata describes \(Missing key\(s\) in state_dict",
    ),
    (
        "a network larger than memory",
        _pretrain(width=200_000),
        r"pretrain\.width 200000, .*\(backbone small-cnn: [\d,]+ parameters.*\) need about [\d.]+ [TP]iB of memory, "
        r"but [\d.]+ \w+ is available; lower pretrain\.width",
    ),
    (
        "a head and queue larger than memory",
        _pretrain(dim=HUGE * 10_000),
        r"pretrain\.dim 100000000000\b.* need about [\d.]+ [TP]iB of memory, but .* is available; lower .*pretrain\.dim",
    ),
    (
        "analysed pairs larger than memory",
        _analyze(similarity="data/similarity.tsv", queries=HUGE, negatives=HUGE),
        r"analysis\.queries 10000000 x analysis\.negatives 10000000 \(100,000,000,000,000 pairs, 80 bytes each\) need "
        r"about [\d.]+ PiB of memory, but .* is available; lower analysis\.queries or analysis\.negatives",
    ),
]


def _check_one_line(status: int, err: str, message: str, code: int = 2) -> str:
    assert status == code, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert re.search(message, lines[0]), lines[0]
    assert lines[0].startswith("negatives ")
    return lines[0]


@pytest.mark.parametrize("builder, message", [c[1:] for c in CATALOGUE], ids=[c[0] for c in CATALOGUE])
def test_a_fault_is_one_line_naming_it_and_changes_nothing(files, capsys, builder, message):
    root, data = files
    argv = builder(root, data)
    before = _snapshot(root)
    _check_one_line(main(argv), capsys.readouterr().err, message)
    assert _snapshot(root) == before
    assert not (root / "new").exists()


def test_a_prepared_dataset_larger_than_memory_is_refused_before_it_is_read(files, capsys, monkeypatch):
    root, data = files
    monkeypatch.setattr(memory, "available_bytes", lambda: 1000)
    before = _snapshot(root)
    _check_one_line(
        main(_evaluate()(root, data)),
        capsys.readouterr().err,
        rf"{data} \([\d,]+ bytes\) need about [\d.]+ KiB of memory, but 1000 bytes is available; run this "
        "where there is more memory",
    )
    assert _snapshot(root) == before


def test_an_allocation_that_fails_anyway_is_one_line(files, capsys, monkeypatch):
    from negatives.training import build

    def refuse(*a, **k):
        raise RuntimeError(
            "[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate "
            "memory: you tried to allocate 2880000000000 bytes. Error code 12"
        )

    root, data = files
    monkeypatch.setattr(build, "seeded_encoder", refuse)
    _check_one_line(
        main(_pretrain(out="oom")(root, data)),
        capsys.readouterr().err,
        r"error: out of memory \(.*you tried to allocate 2880000000000 bytes.*\); lower the sizes",
    )
    shutil.rmtree(root / "oom")


def test_ctrl_c_before_training_is_one_line(files, capsys, monkeypatch):
    from negatives.training import pretrain

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    root, data = files
    monkeypatch.setattr(pretrain, "load_prepared", interrupted)
    before = _snapshot(root)
    _check_one_line(
        main(_pretrain()(root, data)),
        capsys.readouterr().err,
        r"negatives pretrain: interrupted; .*run the same command again to resume",
        code=130,
    )
    assert _snapshot(root) == before and not (root / "new").exists()


# ------------------------------------------------------ streamed image folders


@pytest.fixture(scope="module")
def streamed(tmp_path_factory, wordnet_reader):
    from negatives.data import prepare

    tmp = tmp_path_factory.mktemp("streamed-faults")
    fake_imagenet(tmp / "raw", per_class=8)
    return tmp, prepare(
        "imagenet", tmp / "raw", tmp / "out", storage="stream", image_size=16, wordnet=wordnet_reader, workers=0
    )


def _missing(path: Path, monkeypatch) -> None:
    path.unlink()


def _unreadable(path: Path, monkeypatch) -> None:
    """As if the file were mode 000 (root reads those anyway): PIL's open is refused."""
    import PIL.Image

    opened = PIL.Image.open

    def refuse(fp, *a, **k):
        if str(fp) == str(path):
            raise PermissionError(13, "Permission denied", str(fp))
        return opened(fp, *a, **k)

    monkeypatch.setattr(PIL.Image, "open", refuse)


def _garbage(path: Path, monkeypatch) -> None:
    path.write_bytes(b"not a JPEG at all")


@pytest.mark.parametrize(
    "damage, message",
    [
        (_missing, r"n01440764_3\.JPEG: no such image; the folder changed after the dataset was prepared"),
        (_unreadable, r"n01440764_3\.JPEG: cannot be read \(Permission denied\); make it readable"),
        (_garbage, r"n01440764_3\.JPEG: cannot decode the image \(cannot identify image file .*\); replace it"),
    ],
    ids=["missing", "unreadable", "not an image"],
)
@pytest.mark.parametrize("threads", [1, 2], ids=["in process", "in a worker"])
def test_a_bad_image_of_a_streamed_folder_is_one_line_naming_it(
    streamed, capsys, monkeypatch, damage, message, threads
):
    tmp, data = streamed
    victim = tmp / "raw" / "train" / "n01440764" / "n01440764_3.JPEG"
    kept = victim.read_bytes()
    damage(victim, monkeypatch)
    try:
        before = _snapshot(tmp)
        argv = [
            "pretrain",
            "--data",
            str(data),
            "--policy",
            "all",
            "--temperature",
            "0.2",
            "--seed",
            "0",
            "--settings",
            json.dumps({**TINY, "batch_size": 8, "queue_size": 16, "threads": threads}),
            "--out",
            str(tmp / "run"),
        ]
        _check_one_line(main(argv), capsys.readouterr().err, message)
        shutil.rmtree(tmp / "run", ignore_errors=True)  # the run's folder: made before its first batch
        assert _snapshot(tmp) == before
    finally:
        victim.write_bytes(kept)


def test_an_image_size_larger_than_memory_is_refused_before_decoding(streamed, capsys):
    tmp, _ = streamed
    before = _snapshot(tmp)
    for storage, message in (
        (
            "memory",
            r"datasets\.imagenet\.storage memory: 32 decoded images of "
            r"3x1000000x1000000 .* need about [\d.]+ [TP]iB of memory, but .* is "
            r"available; "
            r"use datasets\.imagenet\.storage: stream",
        ),
        (
            "stream",
            r"datasets\.imagenet\.image_size 1000000: 1 decoded images .* need about "
            r"[\d.]+ TiB of memory, .*; lower datasets\.imagenet\.image_size",
        ),
    ):
        argv = [
            "prepare",
            "--dataset",
            "imagenet",
            "--root",
            str(tmp / "raw"),
            "--out",
            str(tmp / "new"),
            "--settings",
            json.dumps({"storage": storage, "image_size": 10**6, "workers": 0}),
        ]
        _check_one_line(main(argv), capsys.readouterr().err, message)
    assert _snapshot(tmp) == before and not (tmp / "new").exists()


# ----------------------------------------------------------------- Ctrl-C


def test_ctrl_c_while_training_saves_says_one_line_and_the_rerun_resumes(files, tmp_path):
    """SIGINT as a terminal sends it: at the next step the run saves last.pt,
    says so on one stderr line and exits 130; the same command resumes."""
    root, data = files
    argv = [sys.executable, "-m", "negatives", *_pretrain(out=str(tmp_path / "run"), epochs=12)(Path("/"), data)]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    first = proc.stdout.readline()  # the first epoch's line: training is under way
    assert first.startswith("epoch"), first + proc.stderr.read()
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    line = err.strip()
    assert re.fullmatch(
        rf"negatives pretrain: interrupted: saved {tmp_path}/run/last\.pt at epoch \d+ step \d+; "
        r"run the same command again to resume",
        line,
    ), err
    epoch, step = map(int, re.search(r"epoch (\d+) step (\d+)", line).groups())
    assert not (tmp_path / "run" / "checkpoint.pt").exists()
    left = sorted(p.name for p in (tmp_path / "run").iterdir())
    # no half file (snapshots/ holds whole files of the epochs before, written atomically)
    assert "last.pt" in left and set(left) <= {".pretrain.lock", "last.pt", "last.prev.pt", "snapshots"}, left

    again = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    assert f"resuming from {tmp_path}/run/last.pt at epoch {epoch} step {step}" in again.stdout
    assert (tmp_path / "run" / "checkpoint.pt").exists()


def test_a_second_ctrl_c_stops_at_once():
    from negatives.runtime.checkpoint import INTERRUPT_EXIT_CODE, Preempted, StopSignals

    with StopSignals() as stop:
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.requested == "SIGINT"
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    stopped = Preempted.saved("SIGINT", "run/last.pt", 3, 1)
    assert stopped.code == INTERRUPT_EXIT_CODE == 130
    assert str(stopped) == "interrupted: saved run/last.pt at epoch 3 step 1; run the same command again to resume"


# ------------------------------------------------------------- the workflow


@pytest.fixture
def work(tmp_path):
    shutil.copy(ROOT / "config.yaml", tmp_path / "config.yaml")
    return tmp_path


def _run_sh(work: Path, configfile: Path):
    # a check that let the file through would go on to install: a Python that fails stops it there
    return subprocess.run(
        ["bash", str(ROOT / "run.sh"), "-n", "--configfile", str(configfile)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=work,
        env={**os.environ, "NEGATIVES_PYTHON": "false", "NEGATIVES_VENV": str(work / "venv")},
    )


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda work: work, r"a folder, not a config file; give a YAML file \(e\.g\. .*/config\.yaml\)"),
        (
            lambda work: _write(work / "figure.yaml", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR"),
            r"binary data, not a YAML config file",
        ),
        (
            lambda work: _write(work / "latin1.yaml", "pretrain:\n  lr: 0.06 # \xe9t\xe9\n".encode("latin-1")),
            r"binary data, not a YAML config file \(YAML is UTF-8 text\)",
        ),
    ],
    ids=["a folder", "a binary file", "not UTF-8"],
)
def test_run_sh_names_a_configfile_that_is_not_a_config_file(work, make, message):
    path = make(work)
    before = _snapshot(work)
    proc = _run_sh(work, path)
    lines = proc.stderr.strip().splitlines()
    named = re.search(rf"--configfile {re.escape(str(path))}: {message}", proc.stderr)
    assert proc.returncode == 1 and len(lines) == 1 and named, proc.stderr[-2000:]
    assert proc.stdout == "" and "Traceback" not in proc.stderr
    assert _snapshot(work) == before and not (work / "venv").exists()


@pytest.mark.parametrize(
    "override, message",
    [
        (
            {"pretrainn": {"lr": 1}},
            r"invalid config: \S+/override\.yaml: top level: Additional properties are not allowed "
            r"\('pretrainn' was "
            r"unexpected\); allowed: analysis, dataset, datasets, .*temperatures$",
        ),
        (
            {"pretrain": {"hidden_dim": -3}},
            r"invalid config: pretrain\.hidden_dim: -3 is not valid under any of the given "
            r"schemas; allowed: integer >= 1 \| null$",
        ),
    ],
    ids=["an unknown section", "one of two kinds"],
)
def test_a_schema_error_is_a_few_lines_naming_key_value_and_what_is_allowed(work, override, message):
    import yaml

    (work / "override.yaml").write_text(yaml.safe_dump(override))
    before = _snapshot(work)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "snakemake",
            "-s",
            str(ROOT / "Snakefile"),
            "-d",
            str(work),
            "-n",
            "--configfile",
            str(work / "override.yaml"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=work,
    )
    out = (proc.stdout + proc.stderr).strip()
    assert proc.returncode != 0 and len(out.splitlines()) <= 5 and "Traceback" not in out, out[-3000:]
    assert any(re.search(message, line) for line in out.splitlines()), out
    assert {k: v for k, v in _snapshot(work).items() if ".snakemake" not in k} == before
