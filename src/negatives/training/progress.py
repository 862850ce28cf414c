"""Progress inside an epoch (``pretrain.log_every``, log only), as
``main_moco.py``'s progress meter: every ``log_every`` seconds of training a
line with the epoch, step, running loss, images/s and the time left for the
epoch and the run; on a terminal a tqdm bar instead.  The loss is summed on
the device: a line reads it once, a step never."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

import torch

__all__ = ["EpochProgress", "duration"]


def duration(seconds: float) -> str:
    """``3725 -> '1:02:05'``, ``65 -> '1:05'``: a time left, to the second."""
    s = max(0, round(seconds))
    h, m = divmod(s // 60, 60)
    return f"{h}:{m:02d}:{s % 60:02d}" if h else f"{m}:{s % 60:02d}"


class EpochProgress:
    """The progress of one process's steps, an epoch at a time.

    ``every`` seconds between lines (0: off); ``steps``: the epoch's steps;
    ``total``: the run's steps; ``batch``: images per step (every
    process's); ``log``: where a line goes; ``stream``: a bar's terminal
    (the bar replaces the lines when it is one); ``clock``: seconds."""

    def __init__(
        self,
        every: float,
        steps: int,
        total: int,
        batch: int,
        log: Callable[[str], None],
        stream=None,
        clock: Callable[[], float] = time.perf_counter,
    ):
        self.every, self.steps, self.total, self.batch, self.log, self.clock = every, steps, total, batch, log, clock
        self.stream = sys.stderr if stream is None else stream
        self.bar = None

    def start(self, epoch: int, first: int) -> None:
        """Epoch ``epoch`` (from 0) starts at its step ``first`` (a resumed one: past 0)."""
        self.epoch, self.first, self.done = epoch, first, 0
        self.t0 = self.clock()
        self.due = self.t0 + self.every
        if self.every and _is_terminal(self.stream):
            from tqdm import tqdm  # only on a terminal: a log file never holds a bar's redraws

            self.bar = tqdm(
                total=self.steps, initial=first, desc=f"epoch {epoch + 1}", unit="step", file=self.stream, leave=False
            )

    def step(self, loss_sum: torch.Tensor, count: int) -> None:
        """One more step done; ``loss_sum`` over the epoch's ``count`` steps so far (on the device, read only
        when a line or the bar's loss is due)."""
        self.done += 1
        if self.bar is not None:
            self.bar.update(1)
        if not self.every:
            return
        now = self.clock()
        if now < self.due:
            return
        self.due = now + self.every
        loss = float(loss_sum) / max(1, count)  # the one host read of a line
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{loss:.4f}")
            return
        self.log(self.line(loss, now - self.t0))

    def line(self, loss: float, elapsed: float) -> str:
        """The line after ``elapsed`` seconds of this epoch's steps, at the running ``loss``."""
        i = self.first + self.done  # steps of the epoch done
        per_step = elapsed / max(1, self.done)
        left_epoch = (self.steps - i) * per_step
        left_run = max(0, self.total - self.epoch * self.steps - i) * per_step
        return (
            f"epoch {self.epoch + 1:3d}  step {i}/{self.steps}  loss {loss:.4f}  "
            f"{self.done * self.batch / max(elapsed, 1e-9):.0f} img/s  "
            f"epoch left {duration(left_epoch)}  run left {duration(left_run)}"
        )

    def end(self) -> None:
        """The epoch's steps are over (its bar cleared for the epoch's line)."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _is_terminal(stream) -> bool:
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())
