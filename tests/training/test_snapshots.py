"""The query encoder saved during training for the Section 4 dynamics
(``pretrain.dynamics_epochs``): at the chosen epochs only, the weights of a
run the same bit for bit with snapshots or without, and a run killed and
resumed has the same snapshots as one never interrupted, its earlier files
left as they were."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch
from conftest import ROOT

from negatives.cli import main
from negatives.config import ConfigError
from negatives.training.pretrain import pretrain
from negatives.training.settings import PretrainSettings, load_encoder, snapshot_epochs
from negatives.training.snapshots import saved_snapshots, snapshot_path

SETTINGS = dict(
    backbone="small-cnn", width=4, dim=8, epochs=3, batch_size=16, queue_size=32, bn_splits=2, knn_monitor=0, threads=1
)
POLICY, SEED = "drop[90_100)", 0


def _quiet(_):
    pass


def _state(path, key="encoder"):
    return torch.load(path, weights_only=False)[key]


def _assert_same(a, b):
    assert a.keys() == b.keys()
    assert not [k for k in a if not torch.equal(a[k], b[k])]


@pytest.fixture(scope="module")
def reference(data_path, tmp_path_factory):
    """A run with the default snapshots (epochs 1, 2, 3 of 3)."""
    out = tmp_path_factory.mktemp("reference")
    return pretrain(data_path, "moco", POLICY, 0.2, SEED, SETTINGS, out, log=_quiet)


def test_default_epochs_are_four_points_ending_at_the_last():
    assert snapshot_epochs(None, 200) == (50, 100, 150, 200)
    assert snapshot_epochs(None, 3) == (1, 2, 3) and snapshot_epochs(None, 1) == (1,)
    assert snapshot_epochs([], 10) == () and snapshot_epochs([7, 2], 10) == (2, 7)


def test_snapshots_at_the_chosen_epochs_and_the_weights_unchanged(data_path, tmp_path, reference):
    chosen = pretrain(
        data_path, "moco", POLICY, 0.2, SEED, {**SETTINGS, "dynamics_epochs": [2]}, tmp_path / "a", _quiet
    )
    none = pretrain(data_path, "moco", POLICY, 0.2, SEED, {**SETTINGS, "dynamics_epochs": []}, tmp_path / "b", _quiet)
    assert list(saved_snapshots(tmp_path / "a")) == [2] and saved_snapshots(tmp_path / "b") == {}
    assert list(saved_snapshots(reference.parent)) == [1, 2, 3]
    for key in ("encoder", "model"):  # bit for bit, with snapshots or without
        _assert_same(_state(chosen, key), _state(none, key))
        _assert_same(_state(reference, key), _state(none, key))
    # a snapshot is the encoder that trained: the last one is the final checkpoint's
    _assert_same(_state(snapshot_path(reference.parent, 3)), _state(reference))
    _assert_same(_state(snapshot_path(tmp_path / "a", 2)), _state(snapshot_path(reference.parent, 2)))
    encoder, meta = load_encoder(snapshot_path(reference.parent, 1))  # read as a checkpoint.pt is
    assert not encoder.training and meta["policy"] == POLICY
    assert torch.load(snapshot_path(reference.parent, 1), weights_only=False)["epoch"] == 1


def test_the_cli_passes_the_epochs(data_path, tmp_path):
    args = ["pretrain", "--data", str(data_path), "--policy", POLICY, "--temperature", "0.2", "--seed", "0"]
    settings = {**SETTINGS, "epochs": 2}
    rc = main(
        [*args, "--settings", repr(settings).replace("'", '"'), "--dynamics-epochs", "[1]", "--out", str(tmp_path)]
    )
    assert rc == 0 and list(saved_snapshots(tmp_path)) == [1]


@pytest.mark.parametrize("bad", [[4], [0], [2, 9]])
def test_an_epoch_outside_the_run_is_refused_naming_the_key(bad):
    with pytest.raises(ConfigError, match=r"^pretrain\.dynamics_epochs"):
        PretrainSettings.from_dict({**SETTINGS, "dynamics_epochs": bad})


# the child: a real training process killed (SIGKILL) at the STOP_AT-th MoCo
# forward call ("step"), or while it writes the rolling checkpoint of epoch
# STOP_AT, after that epoch's snapshot ("save")
CHILD = textwrap.dedent(
    """
    import os, signal, sys
    import negatives.training.loop as loop
    from negatives.methods.moco import MoCo
    from negatives.training.pretrain import pretrain
    data, out, settings, stop_at, how = sys.argv[1], sys.argv[2], eval(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
    calls = 0
    forward = MoCo.forward
    def counting_forward(self, *args, **kwargs):
        global calls
        calls += 1
        if calls == stop_at and how == "step":
            os.kill(os.getpid(), signal.SIGKILL)
        return forward(self, *args, **kwargs)
    MoCo.forward = counting_forward
    save = loop.save_rolling
    def dying_save(state, path):
        if how == "save" and state["epoch"] == stop_at and state["step_in_epoch"] == 0:
            os.kill(os.getpid(), signal.SIGKILL)
        save(state, path)
    loop.save_rolling = dying_save
    pretrain(data, "moco", %r, 0.2, %d, settings, out, log=lambda m: None)
"""  # noqa: UP031 -- a code template formatted by %: its braces are its own
    % (POLICY, SEED)
)


@pytest.mark.parametrize("how, stop_at", [("step", 10), ("save", 2)], ids=["in epoch 3", "saving epoch 2"])
def test_a_killed_and_resumed_run_has_the_same_snapshots(data_path, tmp_path, reference, how, stop_at):
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    killed = subprocess.run(
        [sys.executable, "-c", CHILD, str(data_path), str(run), repr(SETTINGS), str(stop_at), how],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    before = {e: p.stat() for e, p in saved_snapshots(run).items()}
    assert list(before) == [1, 2] and not (run / "checkpoint.pt").exists()
    pretrain(data_path, "moco", POLICY, 0.2, SEED, SETTINGS, run, log=_quiet)  # "save": epoch 2 trained again
    after = saved_snapshots(run)
    assert list(after) == [1, 2, 3]
    for e in before:  # a resumed run rewrites nothing it already has
        assert (after[e].stat().st_ino, after[e].stat().st_mtime_ns) == (before[e].st_ino, before[e].st_mtime_ns)
    for e, path in after.items():
        _assert_same(_state(path), _state(snapshot_path(reference.parent, e)))
