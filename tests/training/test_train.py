"""The training loop: determinism, resume, refusals, the prepared format."""

import gzip
import json
import shutil
import struct

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import write_idx

from negatives.data import check_root, read_idx
from negatives.training.pretrain import init_checkpoint, pretrain
from negatives.training.settings import load_encoder

SETTINGS = dict(
    backbone="small-cnn", width=4, dim=8, epochs=2, batch_size=16, queue_size=32, bn_splits=2, knn_monitor=0, threads=1
)


def test_idx_round_trip_and_prepared_format(tmp_path, data_path):
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "x.gz", arr)
    assert np.array_equal(read_idx(tmp_path / "x.gz"), arr)
    d = torch.load(data_path, weights_only=False)
    assert d["train_images"].dtype == torch.uint8 and d["train_images"].shape == (64, 1, 28, 28)
    assert d["test_labels"].tolist() == [i % 10 for i in range(32)]
    assert len(d["classes"]) == 10 and len(d["mean"]) == 1
    tsv = (data_path.parent / "classes.tsv").read_text().splitlines()
    assert tsv[0] == "index\tname\tsynset" and len(tsv) == 11


def test_truncated_idx_is_an_error_naming_the_file(tmp_path):
    path = tmp_path / "bad.gz"
    with gzip.open(path, "wb") as f:
        f.write(struct.pack(">BBBBIII", 0, 0, 8, 3, 5, 28, 28) + b"\0" * 100)
    with pytest.raises(ValueError, match="bad.gz.*truncated"):
        read_idx(path)


def test_missing_data_directory_says_what_to_install(tmp_path):
    with pytest.raises(FileNotFoundError, match="dataset-fashion-mnist"):
        check_root("fashion-mnist", tmp_path / "nowhere")
    (tmp_path / "half").mkdir()
    with pytest.raises(FileNotFoundError, match="t10k-labels"):
        check_root("fashion-mnist", tmp_path / "half")


def _weights(path):
    return torch.load(path, weights_only=False)["encoder"]


def test_same_seed_same_weights_other_seed_other_weights(tmp_path, data_path):
    a = pretrain(data_path, "moco", "keep[50_100)", 0.2, 3, SETTINGS, tmp_path / "a", log=lambda m: None)
    b = pretrain(data_path, "moco", "keep[50_100)", 0.2, 3, SETTINGS, tmp_path / "b", log=lambda m: None)
    c = pretrain(data_path, "moco", "keep[50_100)", 0.2, 4, SETTINGS, tmp_path / "c", log=lambda m: None)
    wa, wb, wc = _weights(a), _weights(b), _weights(c)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert not all(torch.equal(wa[k], wc[k]) for k in wa)
    log = (tmp_path / "a" / "train_log.csv").read_text().splitlines()
    assert log[0].startswith("epoch,loss,lr,knn_top1,images_per_s") and len(log) == 3


class Killed(Exception):
    pass


def test_resume_after_kill_gives_identical_weights(tmp_path, data_path):
    settings = {**SETTINGS, "epochs": 3}
    full = pretrain(data_path, "moco", "drop[90_100)", 0.2, 0, settings, tmp_path / "full", log=lambda m: None)

    def kill_after_epoch_1(msg):
        if msg.startswith("epoch   1"):
            raise Killed  # the process dies right after epoch 1's checkpoint is on disk

    run = tmp_path / "run"
    with pytest.raises(Killed):
        pretrain(data_path, "moco", "drop[90_100)", 0.2, 0, settings, run, log=kill_after_epoch_1)
    assert (run / "last.pt").exists() and not (run / "checkpoint.pt").exists()
    logs = []
    resumed = pretrain(data_path, "moco", "drop[90_100)", 0.2, 0, settings, run, log=logs.append)
    assert logs[0].startswith("resuming") and "epoch 1" in logs[0]
    wf, wr = _weights(full), _weights(resumed)
    assert all(torch.equal(wf[k], wr[k]) for k in wf)
    assert not (run / "last.pt").exists()


def test_the_log_shows_the_gradient_shares_and_a_run_resumed_with_them_on_logs_them_from_then_on(tmp_path, data_path):
    """``pretrain.share_queries`` is log only: a run started without the
    shares (a run of an earlier version) resumes with them, and its log has
    every row, the earlier ones with the shares empty."""
    settings = {**SETTINGS, "epochs": 3, "share_queries": 0}

    def kill_after_epoch_1(msg):
        if msg.startswith("epoch   1"):
            raise Killed

    run = tmp_path / "run"
    with pytest.raises(Killed):
        pretrain(data_path, "moco", "keep[90_100)", 0.2, 0, settings, run, log=kill_after_epoch_1)
    said = []
    pretrain(data_path, "moco", "keep[90_100)", 0.2, 0, {**settings, "share_queries": 8}, run, log=said.append)
    log = pd.read_csv(run / "train_log.csv")
    assert log["epoch"].tolist() == [1, 2, 3] and log["share_hardest_5"].isna().tolist() == [True, False, False]
    # keep[90_100): every negative it learns from is among the hardest 10%, a part of them among the hardest 5%
    assert (log["share_hardest_10"][1:] > 0.999).all() and (log["share_easiest_50"][1:] == 0).all()
    assert ((0 < log["share_hardest_5"][1:]) & (log["share_hardest_5"][1:] < 1)).all()
    assert said[-1].startswith("epoch   3") and "gradient to the hardest 5% 0." in said[-1]


def test_resume_refuses_a_checkpoint_of_another_configuration(tmp_path, data_path):
    def kill(msg):
        raise Killed

    with pytest.raises(Killed):
        pretrain(data_path, "moco", "all", 0.2, 0, SETTINGS, tmp_path, log=kill)
    with pytest.raises(ValueError, match=r"interrupted run of other settings or data \(temperature: 0.2 -> 0.1\)"):
        pretrain(data_path, "moco", "all", 0.1, 0, SETTINGS, tmp_path, log=lambda m: None)
    with pytest.raises(ValueError, match=r"interrupted run of other settings or data \(pretrain.lr: 0.06 -> 0.1\)"):
        pretrain(data_path, "moco", "all", 0.2, 0, {**SETTINGS, "lr": 0.1}, tmp_path, log=lambda m: None)
    with pytest.raises(ValueError, match=r"interrupted run of other settings or data \(pretrain.threads: 1 -> 2\)"):
        pretrain(data_path, "moco", "all", 0.2, 0, {**SETTINGS, "threads": 2}, tmp_path, log=lambda m: None)
    pretrain(data_path, "moco", "all", 0.2, 0, SETTINGS, tmp_path, log=lambda m: None)  # set back: the run goes on
    assert (tmp_path / "checkpoint.pt").exists()


def test_finished_run_is_not_overwritten(tmp_path, data_path):
    pretrain(data_path, "moco", "all", 0.2, 0, {**SETTINGS, "epochs": 1}, tmp_path, log=lambda m: None)
    before = (tmp_path / "checkpoint.pt").read_bytes()
    with pytest.raises(FileExistsError):
        pretrain(data_path, "moco", "all", 0.2, 0, {**SETTINGS, "epochs": 1}, tmp_path, log=lambda m: None)
    assert (tmp_path / "checkpoint.pt").read_bytes() == before


def test_nan_loss_stops_with_a_clear_message(tmp_path, data_path):
    with pytest.raises(FloatingPointError, match="non-finite loss"):
        # a finite but absurd rate: the first step throws the weights past float range
        pretrain(data_path, "moco", "all", 0.2, 0, {**SETTINGS, "lr": 1e30}, tmp_path, log=lambda m: None)
    assert not (tmp_path / "checkpoint.pt").exists()


def test_random_init_checkpoint_loads_as_encoder(tmp_path, data_path):
    path = init_checkpoint(data_path, "moco", 5, SETTINGS, tmp_path)
    enc, meta = load_encoder(path)
    assert meta["policy"] == "random-init" and meta["epochs"] == 0 and meta["seed"] == 5
    assert enc.represent(torch.zeros(2, 1, 28, 28)).shape == (2, 16)


def test_pretrain_and_evaluate_on_a_streamed_image_folder(tmp_path, wordnet_reader):
    """ImageNet-style folders too large for memory are streamed: training,
    the kNN monitor and the evaluation read the JPEGs batch by batch."""
    from conftest import fake_imagenet

    from negatives import data
    from negatives.evaluation.probes import evaluate_checkpoint

    fake_imagenet(tmp_path / "raw", per_class=4)
    path = data.prepare(
        "imagenet",
        tmp_path / "raw",
        tmp_path / "out",
        storage="stream",
        image_size=16,
        wordnet=wordnet_reader,
        workers=0,
    )
    assert "train_images" not in data.load_prepared(path)
    settings = {
        "backbone": "small-cnn",
        "width": 4,
        "dim": 8,
        "epochs": 2,
        "batch_size": 4,
        "queue_size": 8,
        "bn_splits": 1,
        "knn_monitor": 8,
    }
    ckpt = pretrain(path, "moco", "keep[50_100)", 0.2, 0, settings, tmp_path / "run", log=lambda m: None)
    log = pd.read_csv(tmp_path / "run" / "train_log.csv")
    assert list(log.epoch) == [1, 2] and (log.negatives_kept == 4).all() and log.knn_top1.notna().iloc[-1]
    res = evaluate_checkpoint(
        ckpt, path, {"knn_k": 3, "knn_temperature": 0.1, "fewshot_labels_per_class": 1}, tmp_path / "probe.json"
    )
    assert 0 <= res["linear_top1"] <= 100 and res["policy"] == "keep[50_100)"


@pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None, reason="inductor needs a C compiler")
def test_compiled_encoders_train_like_eager_ones(tmp_path, data_path, monkeypatch):
    """``pretrain.compile``: the fast path gives the plain path's losses (to
    float tolerance) and checkpoints with the same keys (about 30 s: compiling)."""
    compiled = []
    real = torch.nn.Module.compile
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, *a, **k: (compiled.append(self), real(self, *a, **k)))
    one_epoch = {**SETTINGS, "epochs": 1}
    eager = pretrain(data_path, "moco", "keep[50_100)", 0.2, 0, one_epoch, tmp_path / "eager", log=lambda m: None)
    fast = pretrain(
        data_path,
        "moco",
        "keep[50_100)",
        0.2,
        0,
        {**one_epoch, "compile": True},
        tmp_path / "compiled",
        log=lambda m: None,
    )
    assert len(compiled) == 2  # both encoders, in the second run only
    le = pd.read_csv(tmp_path / "eager" / "train_log.csv")["loss"]
    lc = pd.read_csv(tmp_path / "compiled" / "train_log.csv")["loss"]
    assert np.allclose(le, lc, rtol=1e-4, atol=1e-5), (le.tolist(), lc.tolist())
    we, wc = _weights(eager), _weights(fast)
    assert we.keys() == wc.keys()
    assert all(torch.allclose(we[k].float(), wc[k].float(), atol=1e-3) for k in we)


def test_a_run_another_process_trains_is_refused_naming_the_holder(tmp_path, data_path):
    import os
    import subprocess
    import sys

    from negatives.runtime.locks import RunLock

    run = tmp_path / "run"
    with RunLock(run):
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "negatives",
                "pretrain",
                "--data",
                str(data_path),
                "--policy",
                "all",
                "--temperature",
                "0.2",
                "--seed",
                "0",
                "--settings",
                json.dumps(SETTINGS),
                "--out",
                str(run),
            ],
            capture_output=True,
            text=True,
        )
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert f"is being trained by pid {os.getpid()}" in out.stderr and "wait for it" in out.stderr
    assert not (run / "checkpoint.pt").exists() and not (run / "last.pt").exists()  # nothing trained


def test_two_concurrent_pretrains_of_one_run_train_it_once(tmp_path, data_path):
    """Started together on one --out: exactly one trains; the other stops with
    the holder's name (or, if it starts after the first finished, because
    the run is finished); the checkpoint is the one a run alone writes."""
    import subprocess
    import sys

    settings = json.dumps({**SETTINGS, "epochs": 3})
    cmd = [
        sys.executable,
        "-m",
        "negatives",
        "pretrain",
        "--data",
        str(data_path),
        "--policy",
        "all",
        "--temperature",
        "0.2",
        "--seed",
        "0",
        "--settings",
        settings,
        "--out",
    ]
    procs = [
        subprocess.Popen(cmd + [str(tmp_path / "shared")], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    results = [(p.wait(), p.stdout.read(), p.stderr.read()) for p in procs]
    assert sorted(rc for rc, _, _ in results) == [0, 2], results
    loser = next(err for rc, _, err in results if rc == 2)
    assert "is being trained by pid" in loser or "the run is finished" in loser, loser
    alone = subprocess.run(cmd + [str(tmp_path / "alone")], capture_output=True, text=True)
    assert alone.returncode == 0, alone.stderr
    a, b = (torch.load(tmp_path / d / "checkpoint.pt", weights_only=False)["model"] for d in ("shared", "alone"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
