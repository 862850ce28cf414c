"""One GPU per training process on a multi-GPU workstation.

``snakemake --cores all --resources gpu=N`` runs at most N GPU jobs at once,
but does not say *which* GPU each gets.  :func:`claim` turns a bare ``cuda``
device into ``cuda:i`` for a GPU no other process holds: it takes an
exclusive ``flock`` on ``LOCK_DIR/gpu-<id>.lock`` (one file per visible GPU,
``<id>`` the entry of ``CUDA_VISIBLE_DEVICES`` or the index), and keeps it
until the process exits (the kernel drops the lock then, even after
SIGKILL).  A process holds at most one GPU; asking again returns the same.
With ``jobs_per_gpu: K`` (``NEGATIVES_JOBS_PER_GPU``, set by the command
line's ``--jobs-per-gpu``) each GPU has ``K`` such locks, slots, so up to
``K`` jobs share it; jobs take the GPUs' first slots before their second.

When every visible GPU is taken the caller *waits* (it says so once) until
one is free, at most ``NEGATIVES_GPU_WAIT`` seconds (default: no limit);
after that :class:`NoFreeGPU` says which locks are held.  CPU devices and
explicit indices (``cuda:1``) pass through unchanged; under SLURM the job's
``CUDA_VISIBLE_DEVICES`` already holds only its own GPUs, so the lock is
uncontended.  ``NEGATIVES_GPU_LOCK_DIR`` moves the lock files (default
``/tmp/negatives-gpu-locks``, shared by every user of the machine).
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .locks import try_lock

if TYPE_CHECKING:  # torch is imported where a device is claimed: locking alone stays light
    import torch

__all__ = [
    "Lease",
    "NoFreeGPU",
    "LOCK_DIR",
    "acquire",
    "slot_paths",
    "claim",
    "release",
    "device_ids",
    "resolve_device",
]

LOCK_DIR = Path(os.environ.get("NEGATIVES_GPU_LOCK_DIR", "/tmp/negatives-gpu-locks"))
POLL_SECONDS = 0.5


class NoFreeGPU(TimeoutError):
    """Every visible GPU stayed locked by another process for the whole wait."""


@dataclass
class Lease:
    """GPU ``index`` (as torch numbers the visible devices) held through ``fd``."""

    index: int
    ident: str
    path: Path
    fd: int


_LEASE: Lease | None = None


def device_ids(count: int) -> list[str]:
    """Stable names of the ``count`` visible GPUs: the ``CUDA_VISIBLE_DEVICES``
    entries when set (so two processes restricted to different GPUs never
    share a lock), else ``0..count-1``."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible:
        names = [v.strip() for v in visible.split(",") if v.strip()]
        if len(names) >= count:
            return names[:count]
    return [str(i) for i in range(count)]


def _lock_dir(lock_dir: str | os.PathLike | None) -> Path:
    path = Path(lock_dir) if lock_dir is not None else LOCK_DIR
    path.mkdir(parents=True, exist_ok=True)
    try:
        path.chmod(0o1777)  # shared like /tmp
    except OSError:
        pass
    return path


def _wait_limit(timeout: float | None) -> float:
    if timeout is not None:
        return timeout
    value = os.environ.get("NEGATIVES_GPU_WAIT", "")
    return float(value) if value else math.inf


def _slots(slots: int | None) -> int:
    if slots is not None:
        return slots
    value = os.environ.get("NEGATIVES_JOBS_PER_GPU", "")
    return int(value) if value else 1


def slot_paths(ids: list[str], directory: Path, slots: int) -> list[tuple[int, str, Path]]:
    """``(index, ident, lock file)`` of every slot, in the order they are
    taken: the first slot of every GPU, then the second of every GPU, ...
    (jobs spread over the GPUs before they share one).  Slot 0 of a GPU is
    ``gpu-<id>.lock``, slot ``k`` ``gpu-<id>.slot<k>.lock``."""
    return [
        (index, ident, directory / (f"gpu-{ident}.lock" if k == 0 else f"gpu-{ident}.slot{k}.lock"))
        for k in range(slots)
        for index, ident in enumerate(ids)
    ]


def acquire(count: int, lock_dir=None, timeout: float | None = None, log=print, slots: int | None = None) -> Lease:
    """Lock a slot of one of ``count`` GPUs, each with ``slots`` slots
    (default ``NEGATIVES_JOBS_PER_GPU`` or 1: ``jobs_per_gpu``), the lowest
    free GPU first and the GPUs' first slots before their second; wait while
    all are taken (``timeout`` seconds, default ``NEGATIVES_GPU_WAIT`` or no
    limit)."""
    if count < 1:
        raise ValueError("no GPU is visible: set pretrain.device to 'cpu' or 'auto', or check CUDA_VISIBLE_DEVICES")
    directory = _lock_dir(lock_dir)
    slots = _slots(slots)
    order = slot_paths(device_ids(count), directory, slots)
    limit = _wait_limit(timeout)
    start, said = time.monotonic(), False
    what = f"all {count} GPUs" + ("" if slots == 1 else f" ({slots} jobs each)")
    while True:
        for index, ident, path in order:
            fd = try_lock(path, shared_with_others=True)
            if fd is not None:
                return Lease(index, ident, path, fd)
        waited = time.monotonic() - start
        if waited >= limit:
            raise NoFreeGPU(
                f"{what} stayed taken for {waited:.0f} s (locks: {', '.join(str(p) for _, _, p in order)}, each "
                "holding its owner's pid); run fewer GPU jobs at once (snakemake --resources gpu=N), or raise "
                "NEGATIVES_GPU_WAIT"
            )
        if not said:
            log(f"{what} are taken by other processes ({directory}); waiting for one to be free")
            said = True
        time.sleep(min(POLL_SECONDS, max(0.0, limit - waited)))


def release() -> None:
    """Give this process's GPU back (it is also given back when the process exits)."""
    global _LEASE
    if _LEASE is not None:
        os.close(_LEASE.fd)  # closing the only fd drops the flock
        _LEASE = None


def claim(
    device: torch.device, log=print, lock_dir=None, timeout: float | None = None, count: int | None = None
) -> torch.device:
    """``cuda`` -> ``cuda:i`` for a GPU this process now holds alone (see the
    module's docstring); any other device is returned unchanged."""
    import torch

    global _LEASE
    if device.type != "cuda" or device.index is not None:
        return device
    if _LEASE is None:
        _LEASE = acquire(torch.cuda.device_count() if count is None else count, lock_dir, timeout, log)
        log(f"using GPU cuda:{_LEASE.index} (lock {_LEASE.path})")
    if torch.cuda.is_available():
        torch.cuda.set_device(_LEASE.index)
    return torch.device("cuda", _LEASE.index)


def resolve_device(name: str, key: str = "device") -> torch.device:
    """A config's ``device`` (``auto``, ``cpu``, ``cuda``, ``cuda:i``) as a
    :class:`torch.device`; ``auto`` is ``cuda`` when a GPU is visible.  A
    GPU asked for where torch sees none (or not that many) is a
    ``ValueError`` naming ``key``, before any work."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0 or (device.index or 0) >= count:
            why = (
                "this torch is built without CUDA"
                if torch.version.cuda is None
                else f"torch sees {count} GPU(s) (CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')})"
            )
            raise ValueError(
                f"{key}: {name!r} asks for a GPU, but {why}; use {key}: cpu (or auto), or run where a GPU is"
            )
    return device
