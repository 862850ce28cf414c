"""The epoch loop, read as ``main_moco.py``'s ``train()``: for each batch the
step (two views, the method's loss, backward, SGD) and its sums; after each
epoch a log row, the query encoder's snapshot where one is asked for
(:mod:`negatives.training.snapshots`) and a rolling checkpoint; after the
last the final one.  A stop request saves the position mid-epoch and raises
:class:`negatives.runtime.checkpoint.Preempted`; a non-finite loss raises
before anything is saved."""

from __future__ import annotations

import csv
import math
import time
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import torch

from ..data.sources import FolderSource
from ..methods.shares import GROUPS
from ..runtime import distributed
from ..runtime.atomic import atomic_torch_save, atomic_write
from ..runtime.checkpoint import (
    REQUEUE_EXIT_CODE,
    Preempted,
    StopSignals,
    previous_path,
    rng_state,
    save_rolling,
    set_rng_state,
)
from .build import Training
from .identity import keep_finished
from .progress import EpochProgress
from .settings import cosine_lr, epoch_seed, snapshot_epochs, view_crop_draws
from .snapshots import save_snapshot
from .step import train_step

__all__ = ["train"]


@dataclass
class _Sums:
    """An epoch's running sums over this rank's steps (kept by a mid-epoch checkpoint)."""

    loss: torch.Tensor
    kept: float | torch.Tensor = 0.0
    done: int = 0
    #: the gradient shares' sums and their count (:class:`~negatives.methods.shares.GradientShares`), if measured
    shares: torch.Tensor | None = None

    def add(self, loss: torch.Tensor, stats: dict) -> None:
        self.loss += loss  # in place, on the device: no host sync
        self.kept = self.kept + stats["kept"]
        if "shares" in stats:
            self.shares = stats["shares"].double() + (0 if self.shares is None else self.shares)
        self.done += 1


def train(t: Training, stop: StopSignals) -> Path:
    """Train ``t`` from where it starts to its last epoch (or ``max_steps``);
    returns the final checkpoint's path."""
    s, device, resumed = t.s, t.device, t.resumed
    start_epoch, start_i, log_rows = (
        (resumed["epoch"], resumed["step_in_epoch"], resumed["log"]) if resumed else (0, 0, [])
    )
    total_steps = t.steps_per_epoch * s.epochs
    step = start_epoch * t.steps_per_epoch + start_i
    meter = _meter(t, min(total_steps, s.max_steps or total_steps))
    snapshots = snapshot_epochs(s.dynamics_epochs, s.epochs)
    for epoch in range(start_epoch, s.epochs):
        lr = cosine_lr(s.lr, epoch, s.epochs)
        for group in t.opt.param_groups:
            group["lr"] = lr
        order = _shuffle(t, epoch)
        t.model.train()
        t0, sums, first = time.perf_counter(), _Sums(torch.zeros((), device=device)), 0
        if start_i and epoch == start_epoch:  # mid-epoch resume: the draws and sums go on where they stopped
            set_rng_state(resumed["rng"], device)
            first, sums = start_i, _resumed_sums(resumed, device)
        meter.start(epoch, first)
        for i, (x, y, idx) in enumerate(_batches(t, epoch, order, first), start=first):
            if s.max_steps and step >= s.max_steps:
                break
            if distributed.any_rank(stop.requested is not None, device):  # every rank stops at the same step
                _save_and_stop(t, stop, epoch, i, log_rows, sums)
            x, y, idx = (v.to(device, non_blocking=True) for v in (x, y, idx))
            # progress as the exact fraction: scheduled bounds count exactly
            loss, stats = train_step(
                t.model,
                t.aug,
                t.opt,
                x,
                y,
                idx,
                progress=Fraction(step, max(1, total_steps)),
                split=(s.batch_size, t.rows),
            )
            # a host sync: every step on CPU (free there), only at the end of
            # the epoch on a GPU (a non-finite loss makes every later one
            # non-finite too, and nothing is saved before the check)
            if device.type == "cpu" and distributed.any_rank(not torch.isfinite(loss)):
                _non_finite(loss, epoch, i, t.last)
            sums.add(loss, stats)
            step += 1
            meter.step(sums.loss, sums.done)
        meter.end()
        log_rows.append(_epoch_row(t, epoch, lr, sums, t0))
        if epoch + 1 in snapshots:  # before last.pt moves past the epoch: a resume never skips its snapshot
            save_snapshot(t.out, epoch + 1, t.meta, t.model.encoder_q)
        _checkpoint_and_log(t, epoch, log_rows)
        if s.max_steps and step >= s.max_steps:
            break
    _save_final(t, log_rows)
    return t.final


def _meter(t: Training, total: int) -> EpochProgress:
    """Rank 0's progress lines (the other ranks' log is silent: they read no loss for it)."""
    every = t.s.log_every if distributed.rank() == 0 else 0
    return EpochProgress(every, t.steps_per_epoch, total, t.s.batch_size, t.log)


def _shuffle(t: Training, epoch: int) -> torch.Tensor:
    """The epoch's data order; the global generator (the batched augmentation's) reseeded first."""
    torch.manual_seed(epoch_seed(t.seed, epoch))
    return torch.randperm(t.source.num_images, generator=torch.Generator().manual_seed(epoch_seed(t.seed, epoch))).to(
        t.device
    )


def _batches(t: Training, epoch: int, order: torch.Tensor, first: int):
    """This rank's batches of the epoch in ``order``, from step ``first`` on."""
    s, rows, steps = t.s, t.rows, t.steps_per_epoch
    # this rank's images of every batch of the epoch, in order
    mine = order[: steps * s.batch_size].view(steps, s.batch_size)[:, rows].reshape(-1)
    b = rows.stop - rows.start
    if isinstance(t.source, FolderSource):  # cropped as decoded, on the full image (the official pipeline)
        return t.source.view_batches(
            mine[first * b :].cpu(),
            b,
            view_crop_draws(t.seed, epoch, first, steps, s.batch_size, rows),
            scale=(s.crop_scale_min, 1.0),
            ratio=t.aug.crop_ratio,
        )
    return t.source.batches(mine[first * b :], b, drop_last=True)


def _resumed_sums(resumed: dict, device: torch.device) -> _Sums:
    """This rank's partial sums of a mid-epoch checkpoint (one per rank, in rank order; a checkpoint of
    an earlier version holds their mean, a 0-d tensor and a float)."""
    loss, kept, shares = resumed["loss_sum"], resumed["kept_sum"], resumed.get("shares_sum")
    if loss.dim():
        loss, kept = loss[distributed.rank()], kept[distributed.rank()].to(device)
    shares = None if shares is None else shares[distributed.rank()].to(device)
    return _Sums(loss.to(device), kept, resumed["done"], shares)


def _save_and_stop(t: Training, stop: StopSignals, epoch: int, i: int, log_rows: list, sums: _Sums):
    """Save the position before step ``i`` of ``epoch`` in ``last.pt`` and raise
    :class:`Preempted` (every rank, once rank 0 has written it)."""
    # every rank's own partial sums, in rank order: each rank of the resume goes on from its own, so the
    # epoch's mean is summed in the order of the run straight through (a mean of means would round otherwise)
    loss_part, kept_part = (
        distributed.gather_rows(torch.as_tensor(v, device=t.device).detach().reshape(1))[0].cpu()
        for v in (sums.loss, sums.kept)
    )
    shares_part = None if sums.shares is None else distributed.gather_rows(sums.shares.unsqueeze(0))[0].cpu()
    if distributed.rank() == 0:
        save_rolling(
            {
                "meta": t.meta,
                "model": t.model.state_dict(),
                "optimizer": t.opt.state_dict(),
                "epoch": epoch,
                "step_in_epoch": i,
                "log": log_rows,
                "rng": rng_state(t.device),
                "loss_sum": loss_part,
                "kept_sum": kept_part,
                "shares_sum": shares_part,
                "done": sums.done,
                "processes": distributed.world_size(),
            },
            t.last,
        )
    distributed.barrier()  # nobody exits before last.pt is written
    stopped = Preempted.saved(stop.requested, t.last, epoch, i)
    if stopped.code == REQUEUE_EXIT_CODE:  # Ctrl-C: said once, on stderr, by python -m negatives
        t.log(str(stopped))
    raise stopped


def _epoch_row(t: Training, epoch: int, lr: float, sums: _Sums, t0: float) -> dict:
    """The epoch's log row: its loss and kept counts over every rank's queries, the kNN monitor, the speed."""
    loss_sum = distributed.mean_(sums.loss.detach())
    kept_sum = distributed.mean_(torch.as_tensor(sums.kept, dtype=torch.float64, device=t.device))
    if distributed.any_rank(not torch.isfinite(loss_sum)):
        _non_finite(loss_sum, epoch, sums.done - 1, t.last)
    elapsed = time.perf_counter() - t0
    return {
        "epoch": epoch + 1,
        "loss": float(loss_sum) / max(1, sums.done),
        "lr": lr,
        "knn_top1": t.monitor(t.model.encoder_q, epoch) if distributed.rank() == 0 else float("nan"),
        "images_per_s": sums.done * t.s.batch_size / max(elapsed, 1e-9),
        "negatives_kept": float(kept_sum) / max(1, sums.done),
        "seconds": elapsed,
        **_share_columns(t, sums),
    }


def _share_columns(t: Training, sums: _Sums) -> dict:
    """The epoch's mean gradient share of each difficulty group over the measured queries (none: not measured)."""
    if not t.model.gradient_shares.queries:
        return {}
    total = torch.zeros(len(GROUPS) + 1, dtype=torch.float64, device=t.device) if sums.shares is None else sums.shares
    total = distributed.mean_(total.clone()).cpu()  # the ranks' sums and counts (their ratio: all queries')
    return {f"share_{g}": float(total[i] / total[-1]) if total[-1] else math.nan for i, g in enumerate(GROUPS)}


def _checkpoint_and_log(t: Training, epoch: int, log_rows: list[dict]) -> None:
    """The rolling checkpoint after ``epoch``, and its log line (with a warning for a collapsed embedding)."""
    row = log_rows[-1]
    if distributed.rank() == 0:  # one writer: every rank holds the same model
        save_rolling(
            {
                "meta": t.meta,
                "model": t.model.state_dict(),
                "optimizer": t.opt.state_dict(),
                "epoch": epoch + 1,
                "step_in_epoch": 0,
                "log": log_rows,
            },
            t.last,
        )
    t.log(
        "epoch {epoch:3d}  loss {loss:.4f}  knn {knn_top1:.2f}  {images_per_s:.0f} img/s  lr {lr:.4f}  "
        "negatives {negatives_kept:.0f}".format(**row)
        + ("  gradient to the hardest 5% {:.2f}".format(row["share_hardest_5"]) if "share_hardest_5" in row else "")
    )
    if abs(row["loss"] - math.log1p(row["negatives_kept"])) < 1e-3:
        # InfoNCE with every logit equal: the positive is no closer than any negative
        t.log(
            f"warning: the loss is log(1 + {row['negatives_kept']:.0f}) = {row['loss']:.4f}, the value of a "
            "collapsed embedding (every view maps to the same point)"
        )


def _save_final(t: Training, log_rows: list[dict]) -> None:
    """``train_log.csv`` and ``checkpoint.pt`` (by rank 0); the rolling pair removed."""
    if distributed.rank() == 0:
        _write_log(log_rows, t.out / "train_log.csv")
        # the training cost, for the methods figure: median images/s over the epochs
        speed = sorted(r["images_per_s"] for r in log_rows)[len(log_rows) // 2] if log_rows else None
        atomic_torch_save(
            {
                "meta": {**t.meta, "train_images_per_s": speed},
                "encoder": t.model.encoder_q.state_dict(),
                "model": t.model.state_dict(),
                "log": log_rows,
            },
            t.final,
        )
        keep_finished(t.out)
        t.last.unlink(missing_ok=True)
        previous_path(t.last).unlink(missing_ok=True)
    distributed.barrier()  # nobody ends before the checkpoint is written (srun stops a step's other tasks then)


def _non_finite(loss, epoch: int, step: int, last: Path):
    raise FloatingPointError(
        f"non-finite loss {loss.item()} at epoch {epoch} step {step}; the last good checkpoint "
        f"({last if last.exists() else 'none'}) is left intact"
    )


def _write_log(rows: list[dict], path: Path) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="") as f:
            # every row's columns (a run resumed from an older version's checkpoint logs more than its first rows)
            columns = list(dict.fromkeys(k for row in rows for k in row)) or ["epoch"]
            wr = csv.DictWriter(f, fieldnames=columns, restval="")
            wr.writeheader()
            wr.writerows(rows)

    atomic_write(path, write)
