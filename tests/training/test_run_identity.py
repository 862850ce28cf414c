"""A run's identity is what changes its weights, and nothing else: an edit of
any other key never reruns a finished run; an edit of a key in the identity
is refused before any job, naming the key, and deletes nothing; a run is
resumed and evaluated only on the data it was trained on."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
import yaml
from conftest import ROOT
from test_end_to_end import tiny_config

from negatives.cli import main
from negatives.data import prepare
from negatives.data.sources import data_digest, load_prepared
from negatives.training.pretrain import pretrain
from negatives.training.settings import OUTSIDE_IDENTITY, PretrainSettings, meta_differences, run_identity

TINY = dict(
    backbone="small-cnn", width=4, dim=8, epochs=2, batch_size=16, queue_size=32, bn_splits=2, knn_monitor=0, threads=1
)
RUN = "results/fashion-mnist/moco/all/t0.2/seed0"


def test_the_identity_leaves_out_the_speed_log_and_device_keys():
    every = asdict(PretrainSettings())
    assert set(every) - set(run_identity(every)) == set(OUTSIDE_IDENTITY)
    assert set(OUTSIDE_IDENTITY) == {
        "knn_monitor",
        "knn_monitor_every",
        "share_queries",
        "log_every",
        "dynamics_epochs",
        "device",
    }  # threads & co change bits
    assert set(run_identity(every, untrained=True)) == {
        "backbone",
        "width",
        "small_stem",
        "dim",
        "hidden_dim",
        "bn_splits",
    }


def test_meta_differences_name_the_settings_the_device_and_the_data():
    saved = {
        "settings": {"lr": 0.06, "knn_monitor": 1000, "device": "auto", "threads": 1},
        "device_type": "cpu",
        "data_digest": "aaaa",
        "train_images": 300,
        "versions": {"torch": "1"},
    }
    same = {
        "settings": {"lr": 0.06, "knn_monitor": 0, "device": "cpu", "threads": 1},
        "device_type": "cpu",
        "data_digest": "aaaa",
        "train_images": 300,
        "versions": {"torch": "2"},
    }
    assert meta_differences(saved, same) == []
    other = {
        **same,
        "settings": {**same["settings"], "lr": 0.1},
        "device_type": "cuda",
        "data_digest": "bbbb",
        "train_images": 200,
    }
    assert meta_differences(saved, other) == [
        "the training images (their pixels, labels or order; digest aaaa -> bbbb)",
        "the device: cpu -> cuda (pretrain.device)",
        "pretrain.lr: 0.06 -> 0.1",
        "train_images: 300 -> 200",
    ]
    # a checkpoint written before the device and the data were recorded is not compared on them
    old = {"settings": saved["settings"]}
    assert meta_differences(old, same) == []


def test_the_data_digest_is_the_images_their_labels_and_order(fashion_root, tmp_path):
    data = load_prepared(prepare("fashion-mnist", fashion_root, tmp_path / "a", train_images=40, test_images=20))
    digest = data_digest(data)
    assert digest == data["digest"] and set(digest) == {"train", "test"}
    again = load_prepared(prepare("fashion-mnist", fashion_root, tmp_path / "b", train_images=40, test_images=20))
    assert data_digest(again) == digest  # prepared again: the same
    fewer = load_prepared(prepare("fashion-mnist", fashion_root, tmp_path / "c", train_images=30, test_images=20))
    assert data_digest(fewer)["train"] != digest["train"] and data_digest(fewer)["test"] == digest["test"]
    swapped = {k: v for k, v in data.items() if k != "digest"}
    swapped["train_images"] = data["train_images"].flip(0)  # the same images in another order
    assert data_digest(swapped)["train"] != digest["train"]
    pixel = {k: v for k, v in data.items() if k != "digest"}
    pixel["train_images"] = data["train_images"].clone()
    pixel["train_images"][3, 0, 5, 5] ^= 1
    assert data_digest(pixel)["train"] != digest["train"]


def _files(folder: Path) -> dict[str, bytes]:
    """Every file's bytes, but the run lock's (it names the latest process that took it)."""
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not p.name.endswith(".lock")
    }


def test_an_interrupted_run_is_not_resumed_on_other_data(fashion_root, tmp_path, capsys):
    data = prepare("fashion-mnist", fashion_root, tmp_path / "data", train_images=64, test_images=20)
    out = tmp_path / "run"

    def killed(message):  # after the first epoch's last.pt
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        pretrain(data, "moco", "all", 0.2, 0, TINY, out, log=killed)
    assert (out / "last.pt").exists() and not (out / "checkpoint.pt").exists()
    prepare("fashion-mnist", fashion_root, tmp_path / "data", train_images=48, test_images=20)  # edited since
    before = _files(out)
    argv = [
        "pretrain",
        "--data",
        str(data),
        "--method",
        "moco",
        "--policy",
        "all",
        "--temperature",
        "0.2",
        "--seed",
        "0",
        "--settings",
        json.dumps(TINY),
        "--out",
        str(out),
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "last.pt is an interrupted run of other settings or data" in err[0], err
    assert "the training images" in err[0] and "train_images: 64 -> 48" in err[0]
    assert _files(out) == before and not (out / "checkpoint.pt").exists()


def test_a_checkpoint_is_evaluated_only_on_the_data_it_was_trained_on(fashion_root, tmp_path, capsys):
    data = prepare("fashion-mnist", fashion_root, tmp_path / "data", train_images=64, test_images=20)
    out = tmp_path / "run"
    pretrain(data, "moco", "all", 0.2, 0, {**TINY, "epochs": 1}, out, log=lambda m: None)
    other = prepare("fashion-mnist", fashion_root, tmp_path / "other", train_images=48, test_images=20)
    argv = [
        "evaluate",
        "--data",
        str(other),
        "--checkpoint",
        str(out / "checkpoint.pt"),
        "--settings",
        json.dumps({"knn_k": 5, "fewshot_labels_per_class": 1}),
        "--out",
        str(tmp_path / "probe.json"),
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "was trained on other 'fashion-mnist' images than" in err[0], err
    assert "train_images 64 there, 48 here" in err[0] and not (tmp_path / "probe.json").exists()


# ---------------------------------------------------------------- the workflow


def _snakemake(work: Path, target: str, *options) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "snakemake",
            target,
            "--snakefile",
            str(ROOT / "Snakefile"),
            "--directory",
            str(work),
            "--cores",
            "1",
            *options,
            "--configfile",
            str(work / "config.yaml"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )


def _planned(result: subprocess.CompletedProcess) -> set[str]:
    return set(re.findall(r"^(?:local)?rule (\w+):$", result.stdout + result.stderr, re.M))


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A workflow folder with one finished, evaluated run and its config."""
    work = tmp_path_factory.mktemp("identity")
    cfg = tiny_config(work)
    cfg["seeds"] = [0]
    (work / "config.yaml").write_text(yaml.safe_dump(cfg))
    done = _snakemake(work, f"{RUN}/probe.json")
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    return work, cfg


def _edit(cfg: dict, edit) -> dict:
    cfg = json.loads(json.dumps(cfg))
    edit(cfg)
    return cfg


def _with(work: Path, cfg: dict) -> None:
    (work / "config.yaml").write_text(yaml.safe_dump(cfg))


NOT_IDENTITY = {
    "pretrain.knn_monitor": lambda c: c["pretrain"].update(knn_monitor=0),
    "pretrain.knn_monitor_every": lambda c: c["pretrain"].update(knn_monitor_every=1),
    "pretrain.share_queries": lambda c: c["pretrain"].update(share_queries=0),
    "pretrain.log_every": lambda c: c["pretrain"].update(log_every=5),
    "pretrain.dynamics_epochs": lambda c: c["pretrain"].update(dynamics_epochs=[]),
    "analysis.dynamics_queries": lambda c: c["analysis"].update(dynamics_queries=7),
    "pretrain.device auto -> cpu": lambda c: c["pretrain"].update(device="cpu"),
    "evaluate.threads": lambda c: c["evaluate"].update(threads=2),
    "download true, the files there": lambda c: c["datasets"]["fashion-mnist"].update(download=True),
    "stream_above_gb": lambda c: c["datasets"]["fashion-mnist"].update(stream_above_gb=1),
    "the data root through a symbolic link": lambda c: c["datasets"]["fashion-mnist"].update(
        root=str(Path(c["datasets"]["fashion-mnist"]["root"]).parent / "link")
    ),
}


def _all_at_once(cfg: dict) -> None:
    for edit in NOT_IDENTITY.values():
        edit(cfg)


@pytest.mark.parametrize(
    "edit",
    [_all_at_once, *(pytest.param(e, marks=pytest.mark.slow) for e in NOT_IDENTITY.values())],
    ids=["all at once", *NOT_IDENTITY],
)
def test_an_edit_outside_the_identity_never_reruns_a_finished_run(finished, edit):
    work, cfg = finished
    link = Path(cfg["datasets"]["fashion-mnist"]["root"]).parent / "link"
    if not link.exists():
        link.symlink_to(cfg["datasets"]["fashion-mnist"]["root"])
    try:
        _with(work, _edit(cfg, edit))
        plan = _snakemake(work, f"{RUN}/probe.json", "-n")
        assert plan.returncode == 0, plan.stderr[-2000:]
        assert _planned(plan) == set(), plan.stdout[-2000:]
    finally:
        _with(work, cfg)


IDENTITY = {
    "pretrain.lr": (lambda c: c["pretrain"].update(lr=0.03), r"pretrain\.lr 0\.06 there, 0\.03 in the config"),
    "pretrain.epochs": (lambda c: c["pretrain"].update(epochs=2), r"pretrain\.epochs 1 there, 2 in the config"),
    "pretrain.threads": (lambda c: c["pretrain"].update(threads=2), r"pretrain\.threads 1 there, 2 in the config"),
    "pretrain.device cpu -> cuda": (
        lambda c: c["pretrain"].update(device="cuda"),
        r"pretrain\.device 'cpu' there, 'cuda' in the config",
    ),
    "train_images": (
        lambda c: c["datasets"]["fashion-mnist"].update(train_images=250),
        r"datasets\.fashion-mnist\.train_images 300 there, 250 in the config",
    ),
}


@pytest.mark.parametrize(
    "edit, message",
    [pytest.param(*case, marks=[pytest.mark.slow] * (key != "pretrain.lr")) for key, case in IDENTITY.items()],
    ids=IDENTITY.keys(),
)
def test_an_edit_of_the_identity_is_refused_before_any_job_and_deletes_nothing(finished, edit, message):
    work, cfg = finished
    before = _files(work / "results")
    try:
        _with(work, _edit(cfg, edit))
        for args in (["-n"], []):
            refused = _snakemake(work, f"{RUN}/probe.json", *args)
            said = refused.stdout + refused.stderr
            assert refused.returncode != 0
            assert re.search(message, said), said[-2000:]
            assert "never replaces a finished run" in said and "--config results=" in said
            assert "Traceback" not in said
        assert _files(work / "results") == before
        # the deliberate way: a results folder of its own plans the run there, and keeps the finished one
        beside = _snakemake(work, f"results-new/{RUN[8:]}/probe.json", "-n", "--config", "results=results-new")
        assert beside.returncode == 0, beside.stderr[-2000:]
        assert "pretrain" in _planned(beside)
    finally:
        _with(work, cfg)


def test_a_run_snakemake_runs_again_is_put_back_not_trained_again(finished):
    """``--forcerun`` (or a changed rule) makes Snakemake delete a finished
    run's outputs and run its job: the job puts the kept files back."""
    work, cfg = finished
    run = work / RUN
    before = {name: (run / name).read_bytes() for name in ("checkpoint.pt", "train_log.csv")}
    inode = (run / "checkpoint.pt").stat().st_ino
    shutil.rmtree(run / ".finished")  # as a run finished by an older version: planning keeps it
    forced = _snakemake(work, f"{RUN}/probe.json", "--forcerun", "pretrain")
    assert forced.returncode == 0, (forced.stdout + forced.stderr)[-3000:]
    assert "pretrain" in _planned(forced)
    log = (work / "logs" / RUN[8:] / "pretrain.log").read_text()
    assert "restored its checkpoint.pt and train_log.csv" in log and "epoch" not in log, log
    assert {name: (run / name).read_bytes() for name in before} == before
    assert (run / "checkpoint.pt").stat().st_ino == inode  # the same file, not a copy trained again
    assert torch.load(run / "checkpoint.pt", weights_only=False)["meta"]["versions"]["torch"] == torch.__version__


def test_every_setting_outside_the_identity_reaches_the_job_as_a_flag():
    rule = (ROOT / "workflow" / "rules" / "pretrain.smk").read_text()
    flags = {k for k in OUTSIDE_IDENTITY if f"--{k.replace('_', '-')} {{" in rule}
    assert flags == set(OUTSIDE_IDENTITY)
    assert "settings=identity()," in rule and "settings=identity(untrained=True)," in rule


def test_the_training_data_settings_that_count_are_compared():
    from negatives.training.identity import run_differences

    cfg = {
        "pretrain": {},
        "datasets": {
            "folders": {
                "root": "/a",
                "train_images": 300,
                "test_images": 100,
                "storage": "auto",
                "stream_above_gb": 8,
                "download": False,
            }
        },
    }
    meta = {"settings": {}, "dataset": "folders", "data_settings": {"train_images": 300, "storage": "memory"}}
    assert run_differences(meta, cfg) == []  # auto: whichever it chose
    moved = json.loads(json.dumps(cfg))
    moved["datasets"]["folders"].update(root="/b", test_images=50, stream_above_gb=1, download=True)
    assert run_differences(meta, moved) == []
    streamed = json.loads(json.dumps(cfg))
    streamed["datasets"]["folders"].update(storage="stream", train_images=200)
    assert run_differences(meta, streamed) == [
        ("datasets.folders.storage", "memory", "stream"),
        ("datasets.folders.train_images", 300, 200),
    ]
    assert run_differences(meta, streamed, untrained=True) == []  # an untrained encoder sees no image
