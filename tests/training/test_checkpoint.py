"""Preemption-safe training: verified rolling checkpoints, a run killed at any
step (SIGKILL) or stopped (SIGTERM/SIGUSR1) resumes to the same weights, bit
for bit on CPU, and a corrupt newest checkpoint falls back to the previous."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap

import pytest
import torch
from conftest import ROOT

from negatives.runtime.checkpoint import (
    REQUEUE_EXIT_CODE,
    CorruptCheckpoint,
    Preempted,
    StopSignals,
    load_latest,
    load_verified,
    previous_path,
    save_rolling,
)
from negatives.training.pretrain import pretrain

SETTINGS = dict(
    backbone="small-cnn", width=4, dim=8, epochs=3, batch_size=16, queue_size=32, bn_splits=2, knn_monitor=0, threads=1
)
POLICY, SEED = "drop[90_100)", 0
STEPS = 3 * 64 // 16  # 3 epochs of 4 steps over the 64 fake images


@pytest.fixture(scope="module")
def reference(data_path, tmp_path_factory):
    """The encoder weights of the uninterrupted run."""
    out = tmp_path_factory.mktemp("reference")
    return _weights(pretrain(data_path, "moco", POLICY, 0.2, SEED, SETTINGS, out, log=lambda m: None))


def _weights(path):
    """The encoder's weights, and the log's per-epoch loss and gradient shares (what a resume must repeat)."""
    state = torch.load(path, weights_only=False)
    columns = [k for k in state["log"][0] if k == "loss" or k.startswith("share_")]
    assert len(columns) == 7  # the loss and the six shares
    log = torch.tensor([[row[k] for k in columns] for row in state["log"]], dtype=torch.float64)
    return {**state["encoder"], "log: loss and gradient shares": log}


def _assert_same(a, b):
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"weights differ: {different}"


# the child: a real training process that, at step STOP_AT (1-based count of
# MoCo forward calls), sends itself SIGNAL, or dies by SIGKILL halfway
# through writing a checkpoint when SIGNAL is "KILL_IN_SAVE"
CHILD = textwrap.dedent(
    """
    import os, signal, sys
    import negatives.runtime.checkpoint as ck
    from negatives.methods.moco import MoCo
    from negatives.training.pretrain import pretrain
    data, out, settings, stop_at, how = sys.argv[1], sys.argv[2], eval(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
    calls = 0
    forward = MoCo.forward
    def counting_forward(self, *args, **kwargs):
        global calls
        calls += 1
        if calls == stop_at and how != "KILL_IN_SAVE":
            os.kill(os.getpid(), getattr(signal, how))
        return forward(self, *args, **kwargs)
    MoCo.forward = counting_forward
    write = ck._write_durably
    def dying_write(data_bytes, path):
        if how == "KILL_IN_SAVE" and calls >= stop_at:
            with open(path, "wb") as f:
                f.write(data_bytes[: len(data_bytes) // 2])
            os.kill(os.getpid(), signal.SIGKILL)
        write(data_bytes, path)
    ck._write_durably = dying_write
    pretrain(data, "moco", %r, 0.2, %d, settings, out, log=lambda m: print(m, flush=True))
"""  # noqa: UP031 -- a code template formatted by %: its braces are its own
    % (POLICY, SEED)
)


def _run_child(data_path, out, stop_at: int, how: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run(
        [sys.executable, "-c", CHILD, str(data_path), str(out), repr(SETTINGS), str(stop_at), how],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )


# ------------------------------------------------------------ file format


def test_rolling_save_keeps_the_previous_checkpoint(tmp_path):
    last = tmp_path / "last.pt"
    save_rolling({"epoch": 1}, last)
    assert not previous_path(last).exists()
    save_rolling({"epoch": 2}, last)
    assert previous_path(last) == tmp_path / "last.prev.pt"
    assert load_verified(last) == {"epoch": 2} and load_verified(previous_path(last)) == {"epoch": 1}
    assert not (tmp_path / "last.pt.tmp").exists()
    assert load_latest(last, log=lambda m: None) == ({"epoch": 2}, last)
    assert load_latest(tmp_path / "none.pt") is None


@pytest.mark.parametrize(
    "damage, reason",
    [
        (lambda b: b[: len(b) - 7], "truncated"),
        (lambda b: b[:20], "shorter than the 48-byte header"),
        (lambda b: b[:-100] + bytes([b[-100] ^ 1]) + b[-99:], "SHA-256 of the payload does not match"),
        (lambda b: b"PK" + b[2:], "not a negatives checkpoint"),
        (lambda b: b"", "truncated"),
    ],
)
def test_a_damaged_checkpoint_is_detected_and_the_previous_used(tmp_path, damage, reason):
    last = tmp_path / "last.pt"
    save_rolling({"epoch": 1, "w": torch.arange(100.0)}, last)
    save_rolling({"epoch": 2, "w": torch.arange(100.0) * 2}, last)
    last.write_bytes(damage(last.read_bytes()))
    with pytest.raises(CorruptCheckpoint, match=reason):
        load_verified(last)
    said = []
    state, used = load_latest(last, log=said.append)
    assert used == tmp_path / "last.prev.pt" and state["epoch"] == 1
    assert len(said) == 1 and said[0].startswith(f"checkpoint {last} is unusable") and reason in said[0]


def test_when_every_checkpoint_is_damaged_the_error_says_what_to_delete(tmp_path):
    last = tmp_path / "last.pt"
    save_rolling({"epoch": 1}, last)
    save_rolling({"epoch": 2}, last)
    for path in (last, previous_path(last)):
        path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(CorruptCheckpoint, match=r"no usable checkpoint: .*Delete .*last.pt and .*last.prev.pt"):
        load_latest(last, log=lambda m: None)


def test_stop_signals_set_a_flag_and_restore_the_handlers():
    before = signal.getsignal(signal.SIGTERM)
    with StopSignals() as stop:
        assert stop.requested is None
        os.kill(os.getpid(), signal.SIGUSR1)
        assert stop.requested == "SIGUSR1"
    assert signal.getsignal(signal.SIGTERM) is before
    assert Preempted("x").code == REQUEUE_EXIT_CODE == 75


# ------------------------------------------------------- real processes


def test_sigkill_at_a_random_step_then_rerun_gives_identical_weights(tmp_path, data_path, reference):
    stop_at = random.Random().randint(1, STEPS)  # a different step each run; printed on failure
    run = tmp_path / "run"
    killed = _run_child(data_path, run, stop_at, "SIGKILL")
    assert killed.returncode == -signal.SIGKILL, f"step {stop_at}: {killed.stderr[-2000:]}"
    assert not (run / "checkpoint.pt").exists()
    said = []
    _assert_same(reference, _weights(pretrain(data_path, "moco", POLICY, 0.2, SEED, SETTINGS, run, log=said.append)))
    if stop_at > 4:  # at least one epoch's checkpoint was on disk
        assert said[0].startswith(f"resuming from {run / 'last.pt'} at epoch {(stop_at - 1) // 4} step 0")
    assert not (run / "last.pt").exists() and not (run / "last.prev.pt").exists()


def test_sigkill_while_writing_a_checkpoint_then_rerun_gives_identical_weights(tmp_path, data_path, reference):
    run = tmp_path / "run"
    killed = _run_child(data_path, run, 6, "KILL_IN_SAVE")  # dies writing epoch 2's checkpoint
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert (run / "last.pt.tmp").stat().st_size > 0 and load_verified(run / "last.pt")["epoch"] == 1
    said = []
    _assert_same(reference, _weights(pretrain(data_path, "moco", POLICY, 0.2, SEED, SETTINGS, run, log=said.append)))
    assert said[0].startswith("resuming from") and "at epoch 1 step 0" in said[0]


@pytest.mark.parametrize("how", ["SIGTERM", "SIGUSR1"])
def test_stop_signal_saves_mid_epoch_exits_75_and_resumes_bit_identical(tmp_path, data_path, reference, how):
    run = tmp_path / "run"
    stopped = _run_child(data_path, run, 6, how)  # during the 2nd step of epoch 1
    assert stopped.returncode == REQUEUE_EXIT_CODE, stopped.stderr[-2000:]
    assert f"{how}: saved {run / 'last.pt'} at epoch 1 step 2" in stopped.stdout
    state = load_verified(run / "last.pt")
    assert (state["epoch"], state["step_in_epoch"], state["done"]) == (1, 2, 2)
    assert load_verified(run / "last.prev.pt")["epoch"] == 1 and "rng" in state
    said = []
    _assert_same(reference, _weights(pretrain(data_path, "moco", POLICY, 0.2, SEED, SETTINGS, run, log=said.append)))
    assert said[0] == f"resuming from {run / 'last.pt'} at epoch 1 step 2"


def test_stop_signal_in_process_raises_preempted(tmp_path, data_path):
    def stop_after_epoch_1(msg):
        if msg.startswith("epoch   1"):
            os.kill(os.getpid(), signal.SIGTERM)

    with pytest.raises(Preempted, match="SIGTERM: saved .* at epoch 1 step 0") as stopped:
        pretrain(data_path, "moco", POLICY, 0.2, SEED, SETTINGS, tmp_path, log=stop_after_epoch_1)
    assert stopped.value.code == 75
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is gone again


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_corrupt_newest_checkpoint_falls_back_and_still_gives_identical_weights(tmp_path, data_path, reference, damage):
    class Killed(Exception):
        pass

    def kill_after_epoch_2(msg):
        if msg.startswith("epoch   2"):
            raise Killed

    with pytest.raises(Killed):
        pretrain(data_path, "moco", POLICY, 0.2, SEED, SETTINGS, tmp_path, log=kill_after_epoch_2)
    last = tmp_path / "last.pt"
    data = last.read_bytes()
    last.write_bytes(
        data[: len(data) // 2] if damage == "truncate" else data[:-10] + bytes([data[-10] ^ 0xFF]) + data[-9:]
    )
    said = []
    _assert_same(
        reference, _weights(pretrain(data_path, "moco", POLICY, 0.2, SEED, SETTINGS, tmp_path, log=said.append))
    )
    assert said[0].startswith(f"checkpoint {last} is unusable")
    assert said[1] == f"resuming from {tmp_path / 'last.prev.pt'} at epoch 1 step 0"
