"""A catalogue of bad inputs.  To ``python -m negatives``: each must end in
one line on stderr that names the key or file (no traceback), exit status 2,
and leave every file as it was -- no finished run touched, no run folder
made for a command refused before any work.  To the workflow (snakemake and
./run.sh): each must stop before the jobs are planned, with a message that
names the key or file, and leave every file as it was."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, fake_fashion_mnist

from negatives.cli import main
from negatives.data import prepare
from negatives.runtime.atomic import atomic_write
from negatives.runtime.locks import RunLock
from negatives.training.pretrain import pretrain

_HAS_GPU = __import__("torch").cuda.is_available()
TINY = dict(
    backbone="small-cnn", width=4, dim=8, epochs=1, batch_size=16, queue_size=32, bn_splits=2, knn_monitor=0, threads=1
)


@pytest.fixture(scope="module")
def files(fashion_root, tmp_path_factory):
    """A prepared dataset and a finished run, shared by the catalogue."""
    root = tmp_path_factory.mktemp("catalogue")
    shutil.copytree(fashion_root, root.parent / f"{root.name}-source")
    data = prepare("fashion-mnist", fashion_root, root / "data")
    pretrain(data, "moco", "all", 0.2, 0, TINY, root / "finished", log=lambda m: None)
    names = [line.split("\t")[1] for line in (root / "data" / "classes.tsv").read_text().splitlines()[1:]]
    atomic_write(
        root / "data" / "similarity.tsv",
        lambda tmp: tmp.write_text(
            "\t".join(["class", *names]) + "\n" + "".join("\t".join([n, *["1"] * len(names)]) + "\n" for n in names)
        ),
    )
    return root, data


def _pretrain(out="new", policy="all", temperature="0.2", method="moco", **settings):
    return lambda root, data: [
        "pretrain",
        "--data",
        str(data),
        "--method",
        method,
        "--policy",
        policy,
        "--temperature",
        temperature,
        "--seed",
        "0",
        "--settings",
        json.dumps({**TINY, **settings}),
        "--out",
        str(root / out),
    ]


def _evaluate(checkpoint="finished/checkpoint.pt", **settings):
    return lambda root, data: [
        "evaluate",
        "--data",
        str(data),
        "--checkpoint",
        str(root / checkpoint),
        "--settings",
        json.dumps(settings),
        "--out",
        str(root / "new" / "probe.json"),
    ]


def _analyze(similarity="missing.tsv", **settings):
    return lambda root, data: [
        "analyze",
        "--data",
        str(data),
        "--checkpoint",
        str(root / "finished/checkpoint.pt"),
        "--similarity",
        str(root / similarity),
        "--settings",
        json.dumps(settings),
        "--out",
        str(root / "new" / "pairs.parquet"),
    ]


def _cut_gz(root: Path) -> Path:
    """A copy of the fake Fashion-MNIST whose training images stop halfway (outside ``root``'s snapshot)."""
    cut = root.parent / f"{root.name}-cut"
    if not cut.exists():
        shutil.copytree(root.parent / f"{root.name}-source", cut)
        images = cut / "train-images-idx3-ubyte.gz"
        images.write_bytes(images.read_bytes()[: images.stat().st_size // 2])
    return cut


#: (id, argv builder, the message it must give)
CATALOGUE = [
    ("pretrain epochs 0", _pretrain(epochs=0), r"pretrain\.epochs: 0 is less than the minimum of 1"),
    ("pretrain epochs a string", _pretrain(epochs="2"), r"pretrain\.epochs: '2' is not of type 'integer'"),
    ("pretrain lr negative", _pretrain(lr=-1), r"pretrain\.lr: -1 is less than or equal to the minimum of 0"),
    ("pretrain momentum 1", _pretrain(momentum=1.0), r"pretrain\.momentum: 1\.0 is greater than or equal"),
    ("pretrain unknown key", _pretrain(thread=2), r"'thread' was unexpected.*allowed: .*threads"),
    ("pretrain unknown backbone", _pretrain(backbone="vit"), r"pretrain\.backbone: 'vit' is not one of"),
    ("pretrain device", _pretrain(device="tpu"), r"pretrain\.device: 'tpu' is not one of"),
    ("pretrain queue not a multiple", _pretrain(queue_size=40), r"pretrain\.queue_size: 40 must be a multiple"),
    ("pretrain queue below the batch", _pretrain(queue_size=8), r"pretrain\.queue_size: 8 must be a multiple"),
    ("pretrain splits", _pretrain(bn_splits=3), r"pretrain\.bn_splits: 3 must divide pretrain\.batch_size \(16\)"),
    (
        "pretrain processes not dividing the splits",
        _pretrain(processes=3),
        r"pretrain\.processes: 3 must divide pretrain\.bn_splits \(2\)",
    ),
    ("pretrain nodes 0", _pretrain(nodes=0), r"pretrain\.nodes: 0 is less than the minimum of 1"),
    (
        "pretrain across machines, started alone",
        _pretrain(processes=1, nodes=2),
        r"pretrain\.nodes: 2 machines train this run, so its processes are started on each of them by srun",
    ),
    (
        "pretrain simclr on an odd number of processes",
        _pretrain(method="simclr", processes=3, bn_splits=6, batch_size=24, queue_size=48),
        r"SimCLR across 3 processes: half of them train on the first views, half on the second",
    ),
    ("pretrain batch 0", _pretrain(batch_size=0), r"pretrain\.batch_size: 0 is less than the minimum of 1"),
    ("pretrain crop scale", _pretrain(crop_scale_min=1.5), r"pretrain\.crop_scale_min: 1\.5 is greater than"),
    ("pretrain negative temperature", _pretrain(temperature="-0.5"), r"temperature: must be a positive number"),
    ("pretrain zero temperature", _pretrain(temperature="0"), r"temperature: must be a positive number"),
    ("pretrain unknown method", _pretrain(method="byol"), r"method 'byol'; allowed: moco, simclr"),
    ("pretrain unknown policy", _pretrain(policy="keep[5)"), r"policy 'keep\[5\)'.*malformed band"),
    ("pretrain band out of range", _pretrain(policy="keep[90_101)"), r"band bounds must lie in \[0, 100\]"),
    ("pretrain band holds none", _pretrain(policy="keep[99.9_100)"), r"the band holds no negative out of 32"),
    ("pretrain drop removes all", _pretrain(policy="drop[0_100)"), r"removes every one of the 32 negatives"),
    ("pretrain unknown mode", _pretrain(policy="drop[90_100)@swap"), r"unknown mode 'swap' after '@'"),
    ("pretrain replace of a keep", _pretrain(policy="keep[90_100)@replace"), r"'@replace' applies to a removal"),
    (
        "pretrain replace without room",
        _pretrain(policy="drop[90_100)@replace", queue_extra=0),
        r"pretrain\.queue_extra: 0 must be a positive multiple of pretrain\.batch_size \(16\)",
    ),
    (
        "pretrain replace with simclr",
        _pretrain(policy="drop[90_100)@replace", method="simclr", queue_extra=16),
        r"replace mode needs MoCo's queue of older negatives; simclr has none",
    ),
    (
        "pretrain retain-hard with simclr",
        _pretrain(policy="retain-hard[0.25]", method="simclr"),
        r"works through MoCo's queue of negatives; simclr has none \(use method moco\)",
    ),
    ("pretrain mochi more hardest than negatives", _pretrain(policy="mochi[64_8_4]"), r"only 32 candidates"),
    ("pretrain mochi warm-up longer than training", _pretrain(policy="mochi[8_4_4_1]"), r"warm-up of 1 epochs"),
    ("pretrain ring outer ball", _pretrain(policy="ring[0_10]"), r"ring"),
    ("pretrain debiased prior", _pretrain(policy="debiased[1.5]"), r"tau_plus must lie in \[0, 1\)"),
    ("pretrain retain fraction", _pretrain(policy="retain-hard[2]"), r"r must lie in \(0, 1\)"),
    (
        "pretrain missing data",
        lambda root, data: _pretrain()(root, root / "nowhere" / "data.pt"),
        r"nowhere/data\.pt: no prepared dataset \(data\.pt\) there; build it again \(snakemake .*nowhere/data\.pt",
    ),
    (
        "pretrain queue longer than the images",
        _pretrain(queue_size=128),
        r"pretrain\.queue_size 128 is larger than "
        r"the 64 training images",
    ),
    (
        "pretrain batch larger than the images",
        _pretrain(batch_size=128, queue_size=128, bn_splits=2),
        r"pretrain\.batch_size 128 is larger than the 64 training images",
    ),
    ("pretrain a finished run", _pretrain(out="finished"), r"finished/checkpoint\.pt exists: the run is finished"),
    ("evaluate knn_k 0", _evaluate(knn_k=0), r"evaluate\.knn_k: 0 is less than the minimum of 1"),
    (
        "evaluate unknown probe",
        _evaluate(probe="paper"),
        r"evaluate\.probe: 'paper' is not one of \['fast', 'faithful'\]",
    ),
    ("evaluate unknown key", _evaluate(knn_kk=3), r"'knn_kk' was unexpected.*allowed: .*knn_k"),
    (
        "evaluate temperature",
        _evaluate(knn_temperature=0),
        r"evaluate\.knn_temperature: 0 is less than the minimum of 0\.005",
    ),
    ("evaluate faithful epochs", _evaluate(faithful={"epochs": 0}), r"evaluate\.faithful\.epochs: 0 is less than"),
    ("evaluate faithful unknown key", _evaluate(faithful={"lrr": 1}), r"'lrr' was unexpected"),
    (
        "evaluate missing checkpoint",
        _evaluate(checkpoint="nowhere/checkpoint.pt"),
        r"nowhere/checkpoint\.pt: no finished run's checkpoint there; train the run \(snakemake ",
    ),
    ("analyze queries 0", _analyze(queries=0), r"analysis\.queries: 0 is less than the minimum of 1"),
    ("analyze unknown key", _analyze(querys=10), r"'querys' was unexpected.*allowed: .*queries"),
    ("analyze seed negative", _analyze(seed=-1), r"analysis\.seed: -1 is less than the minimum of 0"),
    (
        "analyze more images than the data",
        _analyze(similarity="data/similarity.tsv", queries=60, negatives=10),
        r"analysis\.queries: 60 queries \+ 10 negatives \(analysis\.negatives\) do not fit in the 64 training images",
    ),
    (
        "analyze a missing similarity table",
        _analyze(),
        r"missing\.tsv: no class similarity table there; build it again \(snakemake .*missing\.tsv\)",
    ),
    (
        "evaluate few labels more than a class holds",
        _evaluate(fewshot_labels_per_class=100),
        r"evaluate\.fewshot_labels_per_class: 100 labels per class, but class \d+ \(.*\) has \d+ training images in "
        r".*data\.pt; allowed: at most \d+",
    ),
    *(
        []
        if _HAS_GPU
        else [
            (
                "pretrain cuda without a GPU",
                _pretrain(device="cuda"),
                r"pretrain\.device: 'cuda' asks for a GPU, but .*; "
                r"use pretrain\.device: cpu \(or auto\)",
            ),
            ("evaluate cuda without a GPU", _evaluate(device="cuda"), r"evaluate\.device: 'cuda' asks for a GPU, but"),
        ]
    ),
    (
        "pretrain a negative seed",
        lambda root, data: [*_pretrain()(root, data)[:-4], "--seed", "-1", *_pretrain()(root, data)[-4:]],
        r"seed: must be an integer >= 0 \(an entry of seeds\), got -1",
    ),
    (
        "init an unknown method",
        lambda root, data: ["init", "--data", str(data), "--method", "byol", "--seed", "0", "--out", str(root / "new")],
        r"method: 'byol' is not one of",
    ),
    (
        "init a finished run",
        lambda root, data: ["init", "--data", str(data), "--seed", "0", "--out", str(root / "finished")],
        r"finished/checkpoint\.pt exists",
    ),
    (
        "prepare a negative subset",
        lambda root, data: [
            "prepare",
            "--dataset",
            "fashion-mnist",
            "--root",
            str(root),
            "--out",
            str(root / "new"),
            "--train-images",
            "-5",
        ],
        r"datasets\.fashion-mnist\.train_images: -5 is less than the minimum of 0",
    ),
    (
        "prepare an unknown key",
        lambda root, data: [
            "prepare",
            "--dataset",
            "fashion-mnist",
            "--root",
            str(root),
            "--out",
            str(root / "new"),
            "--settings",
            '{"storag": "memory"}',
        ],
        r"datasets\.fashion-mnist: Additional properties are not allowed \('storag' was unexpected\); allowed: .*storage",
    ),
    (
        "prepare a cut-short .gz file",
        lambda root, data: [
            "prepare",
            "--dataset",
            "fashion-mnist",
            "--root",
            str(_cut_gz(root)),
            "--out",
            str(root / "new"),
        ],
        r"cut/train-images-idx3-ubyte\.gz: not a complete gzip file \(Compressed file ended before",
    ),
    (
        "init width 0",
        lambda root, data: [
            "init",
            "--data",
            str(data),
            "--seed",
            "0",
            "--settings",
            json.dumps({**TINY, "width": 0}),
            "--out",
            str(root / "new"),
        ],
        r"pretrain\.width: 0 is less than the minimum of 1",
    ),
]


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def refused(root: Path, argv: list[str], message: str, capsys) -> str:
    """Run ``python -m negatives argv`` in-process and check a catalogue entry:
    exit status 2, one line on stderr (no traceback) matching ``message``,
    every file under ``root`` as it was, no run folder made.  The line."""
    before = _snapshot(root)
    status = main(argv)
    err = capsys.readouterr().err
    assert status == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert re.search(message, lines[0]), lines[0]
    assert lines[0].startswith("negatives ")
    assert _snapshot(root) == before  # nothing written, nothing changed
    assert not (root / "new").exists()  # refused before any work: no run folder made
    return lines[0]


@pytest.mark.parametrize("builder, message", [c[1:] for c in CATALOGUE], ids=[c[0] for c in CATALOGUE])
def test_a_bad_input_is_one_line_naming_it_and_changes_nothing(files, capsys, builder, message):
    root, data = files
    refused(root, builder(root, data), message, capsys)


def test_a_run_being_trained_is_refused_and_left_alone(files, capsys):
    root, data = files
    with RunLock(root / "busy"):
        before = _snapshot(root)
        status = main(_pretrain(out="busy")(root, data))
        assert _snapshot(root) == before
    err = capsys.readouterr().err
    assert status == 2 and "busy is being trained by pid" in err and "Traceback" not in err


def test_bad_json_settings_is_a_usage_error():
    with pytest.raises(SystemExit) as e:
        main(
            [
                "pretrain",
                "--data",
                "x",
                "--policy",
                "all",
                "--temperature",
                "0.2",
                "--seed",
                "0",
                "--settings",
                "{epochs: 2}",
                "--out",
                "y",
            ]
        )
    assert e.value.code == 2


def test_damaged_and_mismatched_files_are_named(files, tmp_path, capsys):
    """A truncated data.pt or checkpoint.pt, a rolling last.pt given to
    evaluate, a checkpoint of another dataset, an --out that cannot be
    written: one line each, naming the file, before the evaluation runs."""
    import torch

    root, data = files
    truncated = tmp_path / "data.pt"
    truncated.write_bytes(Path(data).read_bytes()[:1000])
    ckpt = root / "finished" / "checkpoint.pt"
    half = tmp_path / "checkpoint.pt"
    half.write_bytes(ckpt.read_bytes()[:500])
    other = tmp_path / "other.pt"
    state = torch.load(ckpt, weights_only=False)
    state["meta"]["dataset"] = "cifar10"
    torch.save(state, other)
    resized = tmp_path / "resized.pt"
    state = torch.load(ckpt, weights_only=False)
    state["meta"].update(image_size=[32, 32], num_classes=20)
    torch.save(state, resized)
    flipped = tmp_path / "flipped" / "data.pt"
    atomic_write(flipped, lambda tmp: tmp.write_bytes(Path(data).read_bytes()))
    raw = bytearray(flipped.read_bytes())
    raw[-200] ^= 1  # one bit of the images: torch would load it
    flipped.write_bytes(bytes(raw))
    locked = tmp_path / "ro"
    locked.mkdir()
    locked.chmod(0o500)
    cases = [
        (["--data", str(truncated), "--checkpoint", str(ckpt)], rf"{truncated} is not a complete prepared dataset"),
        (["--data", str(data), "--checkpoint", str(half)], rf"{half} is not a complete finished run's checkpoint"),
        (
            ["--data", str(flipped), "--checkpoint", str(ckpt)],
            rf"{flipped} is damaged: its SHA-256 differs from the "
            r"one written with it .*; delete it and build it again",
        ),
        (
            ["--data", str(data), "--checkpoint", str(other)],
            r"was trained on 'cifar10' \(1 channels\), but .* holds "
            r"'fashion-mnist'",
        ),
        (
            ["--data", str(data), "--checkpoint", str(resized)],
            r"image_size \[32, 32\] there, \[28, 28\] here; "
            r"num_classes 20 there, 10 here; give the checkpoint",
        ),
    ]
    for args, message in cases:
        assert main(["evaluate", *args, "--out", str(tmp_path / "new" / "probe.json")]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and __import__("re").search(message, err), err
    import os

    if os.geteuid() != 0:  # root writes anywhere
        assert (
            main(["evaluate", "--data", str(data), "--checkpoint", str(ckpt), "--out", str(locked / "probe.json")]) == 2
        )
        assert "is not writable" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()


def test_a_full_disk_while_training_is_one_line_and_leaves_no_temporary_file(files, capsys, monkeypatch):
    import errno

    from negatives.runtime import checkpoint

    root, data = files

    def full(blob, path):
        Path(path).write_bytes(blob[:100])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint, "_write_durably", full)
    assert main(_pretrain(out="full")(root, data)) == 2
    err = capsys.readouterr().err.strip()
    last = root / "full" / "last.pt"
    assert err == (
        f"negatives pretrain: error: cannot write {last}: the disk is full (No space left on device); "
        "free some space there and run again"
    )
    # no last.pt.tmp, no checkpoint: only the lock and epoch 1's snapshot, written whole before last.pt
    left = sorted(p.relative_to(root / "full").as_posix() for p in (root / "full").rglob("*"))
    assert left == [".pretrain.lock", "snapshots", "snapshots/.epoch0001.pt.sha256", "snapshots/epoch0001.pt"]


def test_a_read_only_folder_is_named_before_any_work(files, capsys, monkeypatch):
    import errno

    root, data = files
    before = _snapshot(root)

    def read_only(self, *a, **k):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(Path, "touch", read_only)
    for argv in (_pretrain(out="new")(root, data), _evaluate()(root, data)):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert re.fullmatch(
            rf"negatives \w+: error: {root} is not writable \(Read-only file system\), so "
            rf"{root}/new/\S+ cannot be written; choose another folder",
            err,
        ), err
    assert _snapshot(root) == before and not (root / "new").exists()


def test_a_figure_names_the_damaged_input_and_writes_nothing(tmp_path, capsys):
    import yaml

    cfg = yaml.safe_load((Path(__file__).resolve().parents[2] / "config.yaml").read_text())
    good = tmp_path / "good.json"
    good.write_text(
        json.dumps(
            {"dataset": "d", "method": "moco", "policy": "all", "temperature": 0.2, "seed": 0, "linear_top1": 50.0}
        )
    )
    truncated = tmp_path / "probe.json"
    truncated.write_text('{"dataset": "d", "method": "mo')
    foreign = tmp_path / "other.json"
    foreign.write_text("[1, 2]")
    for bad, message in (
        (truncated, "is not a complete probe.json"),
        (foreign, "is not a probe.json"),
        (tmp_path / "missing.json", "no probe.json there; evaluate the run"),
    ):
        status = main(
            [
                "figure",
                "fig2",
                "--probes",
                str(good),
                str(bad),
                "--config-json",
                json.dumps(cfg),
                "--out",
                str(tmp_path / "figures" / "fig2"),
            ]
        )
        err = capsys.readouterr().err.strip()
        assert status == 2 and len(err.splitlines()) == 1 and f"{bad}" in err and message in err, err
    assert not (tmp_path / "figures").exists()


# ------------------------------------------------------------- the workflow


def _config(**sections):
    """Builder of a bad config: the workdir's override.yaml with ``sections`` merged in."""
    return lambda work: (work / "override.yaml").write_text(
        yaml.safe_dump(_merged(yaml.safe_load((work / "override.yaml").read_text()), sections))
    )


def _merged(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _merged(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _config_text(edit):
    """Builder: config.yaml rewritten by ``edit(text)``."""
    return lambda work: (work / "config.yaml").write_text(edit((work / "config.yaml").read_text()))


def _damaged_probe(work):
    """A probe.json fig2 reads, written by us and then cut short, beside an earlier fig2."""
    probe = work / "results/fashion-mnist/moco/keep[95_100)/t0.2/seed1/probe.json"
    atomic_write(probe, lambda tmp: tmp.write_text(json.dumps({"dataset": "fashion-mnist", "linear_top1": 50.0})))
    probe.write_text('{"dataset": "fash')
    for ext in ("pdf", "png", "csv"):
        atomic_write(work / f"results/figures/fig2.{ext}", lambda tmp: tmp.write_text("the previous figure"))


#: (id, setup of the workdir, snakemake arguments, the message it must give);
#: "run.sh" as the first argument runs ./run.sh instead of snakemake
WORKFLOW_CATALOGUE = [
    (
        "unknown key",
        _config(pretrain={"thread": 2}),
        ["-n"],
        r"invalid config: \S+/override\.yaml: pretrain: Additional properties are not allowed \('thread'",
    ),
    ("a key of the wrong type", _config(pretrain={"lr": "fast"}), ["-n"], r"'fast' is not of type 'number'"),
    (
        "YAML syntax error",
        _config_text(lambda t: t.replace("  lr: 0.06 ", "  lr: [0.06 ", 1)),
        ["-n"],
        r"invalid config: .*config\.yaml:\d+:\d+: ",
    ),
    (
        "a section written twice",
        _config_text(lambda t: t + "\npretrain:\n  epochs: 9\n"),
        ["-n"],
        r"config\.yaml:\d+:1: key 'pretrain' appears twice in one mapping",
    ),
    (
        "an unknown policy",
        _config(figures={"fig2": {"segments": ["hardest-5"]}}),
        ["-n"],
        r"figures\.fig2\.segments\[0\]: unknown policy",
    ),
    (
        "a band holding no negative",
        _config(figures={"fig3": {"removed": ["drop[0_100)"]}}),
        ["-n"],
        r"figures\.fig3: policy 'drop\[0_100\)' with moco .*removes every one",
    ),
    (
        "retain-hard for SimCLR",
        _config(figures={"simclr": {"policies": ["retain-hard[0.25]"]}}),
        ["-n"],
        r"works through MoCo's queue of negatives; simclr has none",
    ),
    ("a negative temperature", _config(temperatures=[-0.5]), ["-n"], r"temperatures"),
    ("an unknown dataset", _config(dataset="mnist"), ["-n"], r"'mnist' is not one of|unknown dataset 'mnist'"),
    (
        "a missing data directory",
        _config(datasets={"fashion-mnist": {"root": "/nonexistent/fmnist"}}),
        ["-n"],
        r"datasets\.fashion-mnist\.root: data directory /nonexistent/fmnist .* does not exist",
    ),
    (
        "a queue longer than the images",
        _config(datasets={"fashion-mnist": {"train_images": 4000}}),
        ["-n"],
        r"pretrain\.queue_size: 4096 is larger than the 4000 training images",
    ),
    ("no job per GPU", _config(jobs_per_gpu=0), ["-n"], r"0 is less than the minimum of 1"),
    (
        "GPUs shared by runs of several processes",
        _config(jobs_per_gpu=2, pretrain={"processes": 2, "device": "cuda"}),
        ["-n"],
        r"jobs_per_gpu: 2 jobs sharing a GPU are for small runs of one process; this config trains each run "
        r"on 2 processes",
    ),
    (
        "splits that do not divide the batch",
        _config(pretrain={"bn_splits": 3}),
        ["-n"],
        r"pretrain\.bn_splits: 3 must divide pretrain\.batch_size \(256\)",
    ),
    (
        "few labels more than the subset",
        _config(evaluate={"fewshot_labels_per_class": 900}),
        ["-n"],
        r"evaluate\.fewshot_labels_per_class: 900 labels per class do not fit in the 8000 training images",
    ),
    (
        "analysed images more than the subset",
        _config(analysis={"queries": 7000}),
        ["-n"],
        r"analysis\.queries: 7000 queries \+ 2000 negatives",
    ),
    (
        "faithful milestones past the epochs",
        _config(evaluate={"probe": "faithful", "faithful": {"epochs": 50}}),
        ["-n"],
        r"evaluate\.faithful\.milestones: \[60, 80\] must be increasing epochs in 1\.\.49",
    ),
    (
        "a damaged input of a figure",
        _damaged_probe,
        ["--cores", "1", "fig2"],
        r"keep\[95_100\)/t0\.2/seed1/probe\.json is damaged: 17 bytes, but \d+ were written .*delete it and run the "
        r"workflow again",
    ),
    (
        "a config file that is not there",
        lambda work: None,
        ["run.sh", "-n", "--configfile", "/nonexistent/my.yaml"],
        r"--configfile /nonexistent/my\.yaml: no such file",
    ),
    (
        "a target after --configfile",
        lambda work: None,
        ["run.sh", "-n", "--configfile", "config.yaml", "fig2"],
        r"--configfile fig2: no such file .*a target goes before --configfile",
    ),
]


@pytest.fixture
def work(tmp_path):
    shutil.copy(ROOT / "config.yaml", tmp_path / "config.yaml")
    root = fake_fashion_mnist(tmp_path / "fmnist")
    (tmp_path / "override.yaml").write_text(yaml.safe_dump({"datasets": {"fashion-mnist": {"root": str(root)}}}))
    return tmp_path


def _files(work: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(work)): p.read_bytes()
        for p in sorted(work.rglob("*"))
        if p.is_file() and ".snakemake" not in p.parts
    }


@pytest.mark.parametrize(
    "setup, args, message", [c[1:] for c in WORKFLOW_CATALOGUE], ids=[c[0] for c in WORKFLOW_CATALOGUE]
)
def test_a_bad_workflow_input_is_named_before_any_job_and_changes_nothing(work, setup, args, message):
    setup(work)
    before = _files(work)
    if args[0] == "run.sh":
        cmd = ["bash", str(ROOT / "run.sh"), *args[1:]]
    else:
        cmd = (
            [
                sys.executable,
                "-m",
                "snakemake",
                "-s",
                str(ROOT / "Snakefile"),
                "-d",
                str(work),
                "--configfile",
                str(work / "override.yaml"),
                "--",
                *args,
            ]
            if "--cores" not in args
            else [
                sys.executable,
                "-m",
                "snakemake",
                "-s",
                str(ROOT / "Snakefile"),
                "-d",
                str(work),
                *args,
                "--configfile",
                str(work / "override.yaml"),
            ]
        )
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=work)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out[-3000:]
    assert re.search(message, out), out[-3000:]
    assert "Traceback" not in out and "Building DAG" not in out, out[-3000:]
    assert _files(work) == before  # no job ran, nothing written or removed


def test_the_catalogue_is_large():
    assert len(CATALOGUE) + len(WORKFLOW_CATALOGUE) >= 60 and len(WORKFLOW_CATALOGUE) >= 15
