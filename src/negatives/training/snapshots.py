"""The query encoder saved during training for the Section 4 dynamics
(``pretrain.dynamics_epochs``, log only): after each chosen epoch rank 0
writes ``snapshots/epochNNNN.pt`` in the run folder, which
:func:`negatives.training.settings.load_encoder` reads as it reads a
``checkpoint.pt`` (``meta`` and ``encoder``, plus ``epoch``).

A snapshot is a copy of the weights and buffers: saving it draws no random
numbers and leaves the model as it is, so the weights of a run are the same
bit for bit with snapshots or without.  A file already there is kept (a
resumed run passing an epoch again rewrites nothing).  The snapshots are no
declared output of the workflow's ``pretrain`` rule: declaring them would
make Snakemake train every finished run again."""

from __future__ import annotations

import re
from pathlib import Path

from ..runtime import distributed
from ..runtime.atomic import atomic_torch_save

__all__ = ["SNAPSHOTS", "snapshot_path", "save_snapshot", "saved_snapshots"]

#: the folder of a run's snapshots
SNAPSHOTS = "snapshots"
_NAME = re.compile(r"epoch(\d{4,})\.pt")


def snapshot_path(run_dir, epoch: int) -> Path:
    """``run_dir/snapshots/epoch{epoch:04d}.pt``."""
    return Path(run_dir) / SNAPSHOTS / f"epoch{epoch:04d}.pt"


def save_snapshot(run_dir, epoch: int, meta: dict, encoder) -> Path | None:
    """Save ``encoder``'s state dict (copied to CPU) after ``epoch`` (1-based)
    atomically, on rank 0, unless that file exists; returns its path on rank 0."""
    if distributed.rank() != 0:
        return None
    path = snapshot_path(run_dir, epoch)
    if path.exists():  # written by an attempt before this one: the same weights
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu", copy=True) for k, v in encoder.state_dict().items()}
    return atomic_torch_save({"meta": meta, "encoder": state, "epoch": epoch}, path)


def saved_snapshots(run_dir) -> dict[int, Path]:
    """``{epoch: path}`` of the snapshots in ``run_dir``, by epoch."""
    folder = Path(run_dir) / SNAPSHOTS
    found = {int(m[1]): p for p in folder.glob("epoch*.pt") if (m := _NAME.fullmatch(p.name))}
    return dict(sorted(found.items()))
