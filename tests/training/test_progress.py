"""The progress lines inside an epoch (pretrain.log_every): when they come and
what they say, on a fake clock; a tqdm bar on a terminal only; a real run's
log holds them and its weights are those of a run without them."""

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from negatives.training.progress import EpochProgress, duration

SRC = Path(__file__).resolve().parents[2] / "src"


class Clock:
    """A clock that moves only when told."""

    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _run(every, steps=10, total=30, batch=8, epoch=1, first=0, step_seconds=2.0, stream=None):
    """Lines of ``steps - first`` steps of ``step_seconds`` each, the loss of every step 0.5 more."""
    clock, lines = Clock(), []
    meter = EpochProgress(
        every, steps, total, batch, lines.append, stream=io.StringIO() if stream is None else stream, clock=clock
    )
    meter.start(epoch, first)
    loss_sum = torch.tensor(
        sum(0.5 * (n + 1) for n in range(first)), dtype=torch.float32
    )  # a resumed epoch's sums go on
    for n in range(first, steps):
        clock.now += step_seconds
        loss_sum += 0.5 * (n + 1)
        meter.step(loss_sum, n + 1)
    meter.end()
    return lines


def test_a_line_each_time_log_every_seconds_of_steps_have_passed():
    # 2 s a step, a line due every 5 s: after steps 3 (6 s), 6 (12 s, due 11) and 9 (18 s, due 17)
    lines = _run(5)
    assert len(lines) == 3
    # after step 3 of epoch 2 (epoch=1): loss (0.5 + 1 + 1.5) / 3 = 1, 3 * 8 images in 6 s,
    # 7 steps of the epoch left at 2 s = 14 s, the run's 30 steps less 10 + 3 done = 17 steps = 34 s
    assert lines[0] == "epoch   2  step 3/10  loss 1.0000  4 img/s  epoch left 0:14  run left 0:34"
    # after step 6: loss (0.5 + ... + 3) / 6 = 1.75, 4 steps left = 8 s, 14 steps of the run = 28 s
    assert lines[1] == "epoch   2  step 6/10  loss 1.7500  4 img/s  epoch left 0:08  run left 0:28"
    assert lines[2].startswith("epoch   2  step 9/10  loss 2.5000")
    assert len(_run(4)) == 5  # due at 4 s, 8 s, ..., 20 s: a step that ends on time logs


def test_a_resumed_epoch_counts_its_speed_from_the_resume():
    # from step 6 of 10: 2 steps (4 s) make the first line at step 8, 2 steps left; the second at step 10
    first, last = _run(4, first=6, epoch=0)
    assert (
        last.startswith("epoch   1  step 10/10")
        and first == "epoch   1  step 8/10  loss 2.2500  4 img/s  epoch left 0:04  run left 0:44"
    )


def test_no_line_when_off_or_when_the_epoch_is_shorter():
    assert _run(0) == []
    assert _run(21) == []  # the epoch's 10 steps take 20 s
    assert len(_run(20)) == 1  # the last step's


def test_time_left_is_written_as_minutes_or_hours():
    assert (duration(5), duration(65), duration(3725), duration(-1)) == ("0:05", "1:05", "1:02:05", "0:00")


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_bar_on_a_terminal_instead_of_lines_and_none_in_a_file():
    tty, file = Terminal(), io.StringIO()
    assert _run(5, stream=tty) == []  # the bar says it
    assert "epoch 2" in tty.getvalue() and "3/10" in tty.getvalue() and "loss=1.0000" in tty.getvalue()
    assert len(_run(5, stream=file)) == 3 and file.getvalue() == ""
    quiet = Terminal()
    assert _run(0, stream=quiet) == [] and quiet.getvalue() == ""  # off: no bar either


def _pretrain(data_path, out: Path, log_every: float) -> subprocess.CompletedProcess:
    settings = dict(backbone="small-cnn", width=4, dim=8, epochs=2, batch_size=16, queue_size=32, bn_splits=2)
    command = [sys.executable, "-m", "negatives", "pretrain", "--data", str(data_path), "--policy", "all"]
    command += ["--temperature", "0.2", "--seed", "0", "--settings", json.dumps({**settings, "knn_monitor": 0})]
    command += ["--threads", "1", "--log-every", str(log_every), "--out", str(out)]
    return subprocess.run(
        command, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(SRC)}, timeout=300
    )


def test_a_run_logs_progress_lines_and_trains_the_same_weights(tmp_path, data_path):
    logged, quiet = _pretrain(data_path, tmp_path / "a", 1e-6), _pretrain(data_path, tmp_path / "b", 0)
    assert logged.returncode == 0 and quiet.returncode == 0, logged.stderr + quiet.stderr
    progress = [line for line in logged.stdout.splitlines() if " step " in line]
    assert progress and all("img/s" in line and "run left" in line for line in progress)
    assert progress[0].startswith("epoch   1  step 1/")
    assert not any(" step " in line for line in quiet.stdout.splitlines())
    a, b = (torch.load(p / "checkpoint.pt", weights_only=False)["model"] for p in (tmp_path / "a", tmp_path / "b"))
    assert all(torch.equal(a[k], b[k]) for k in a)


class CountedReads:
    """A device sum stand-in that counts its host reads."""

    reads = 0

    def __float__(self) -> float:
        CountedReads.reads += 1
        return 1.0


def test_the_loss_is_read_once_per_line_and_never_otherwise():
    clock, lines = Clock(), []
    meter = EpochProgress(5, 10, 10, 8, lines.append, stream=io.StringIO(), clock=clock)
    meter.start(0, 0)
    for n in range(10):
        clock.now += 2.0
        meter.step(CountedReads(), n + 1)
    assert CountedReads.reads == len(lines) == 3
