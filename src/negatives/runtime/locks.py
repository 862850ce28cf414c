"""Exclusive locks held for a process's life: one GPU per process
(:mod:`.gpus`) and one process per run (:class:`RunLock`).  A lock is an
``flock`` on a small file that holds its owner's pid and host; the kernel
drops it when the process ends, however it ends, so a killed owner never
leaves a stale lock."""

from __future__ import annotations

import fcntl
import os
import socket
import time
from pathlib import Path

__all__ = ["try_lock", "holder", "RunLocked", "RunLock"]


def try_lock(path: Path, shared_with_others: bool = False) -> int | None:
    """An fd holding an exclusive lock on ``path`` (created if missing), or
    ``None`` when another process holds it; the file then names this process.
    ``shared_with_others``: the file is writable by every user (GPU locks)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    if shared_with_others:
        try:
            os.fchmod(fd, 0o666)
        except OSError:
            pass
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n{socket.gethostname()}\n{time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode())
    return fd


def holder(path: Path) -> str:
    """Who holds the lock ``path``, as its file says: ``pid P on HOST since T``."""
    try:
        pid, host, since = (path.read_text().splitlines() + ["?", "?", "?"])[:3]
    except OSError:
        return "another process"
    return f"pid {pid} on {host} since {since}"


class RunLocked(BlockingIOError):
    """The run is being trained by another process."""


class RunLock:
    """``with RunLock(run_dir):`` -- this process alone trains the run in
    ``run_dir``; another one gets :class:`RunLocked` naming the holder.

    The lock file is removed when the block ends without an error (the run
    is then finished, which a later process checks after taking the lock);
    after an error it stays, so that no two later processes lock two files."""

    NAME = ".pretrain.lock"

    def __init__(self, run_dir: str | os.PathLike):
        self.path = Path(run_dir) / self.NAME
        self.fd: int | None = None

    def __enter__(self) -> "RunLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fd = try_lock(self.path)
        if self.fd is None:
            raise RunLocked(f"{self.path.parent} is being trained by {holder(self.path)} (lock {self.path}); "
                            "wait for it to finish, or stop that process")
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self.fd is not None:
            if exc_type is None:
                self.path.unlink(missing_ok=True)
            os.close(self.fd)
            self.fd = None
