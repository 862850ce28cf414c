"""Exclusive locks held for a process's life: one GPU per process
(:mod:`.gpus`) and one training per run (:class:`RunLock`, :class:`RankLock`).
A lock is an ``flock`` on a small file that holds its owner's pid and host;
the kernel drops it when the process ends, however it ends, so a killed
owner never leaves a stale lock.

A run trained by several processes is locked while any of them lives: the
process that starts the run holds ``RUN_DIR/.pretrain.lock`` and every other
process of the run holds a lock of its own, ``RUN_DIR/.pretrain.rank<r>.lock``
(the spawned workers all of them, rank 0's included, since the launcher is
not a rank; under torchrun or srun, ranks 1 and up).  A start is refused while
any of these files is locked, so a launcher killed with SIGKILL (which drops
its own lock at once) leaves the run locked by the workers that outlive it.
The workers do not outlive it for long: :func:`die_with_parent`."""

from __future__ import annotations

import ctypes
import fcntl
import os
import signal
import socket
import sys
import time
from pathlib import Path

__all__ = ["try_lock", "holder", "RunLocked", "RunLock", "RankLock", "die_with_parent"]


def _flock(fd: int) -> bool:
    """Whether this process now holds the exclusive lock of ``fd``."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _sign(fd: int) -> None:
    """The lock file names its owner: pid, host, since when."""
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n{socket.gethostname()}\n{time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode())


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
    if not _flock(fd):
        os.close(fd)
        return None
    _sign(fd)
    return fd


def holder(path: Path) -> str:
    """Who holds the lock ``path``, as its file says: ``pid P on HOST since T``."""
    try:
        pid, host, since = (path.read_text().splitlines() + ["?", "?", "?"])[:3]
    except OSError:
        return "another process"
    return f"pid {pid} on {host} since {since}"


def _held(path: Path) -> bool:
    """Whether another process holds the lock ``path`` (an existing file,
    opened read-only and left as it is: a refused start changes nothing)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:  # its owner finished and removed it
        return False
    try:
        return not _flock(fd)
    finally:
        os.close(fd)  # drops the lock if this probe took it


class RunLocked(BlockingIOError):
    """The run is being trained by another process."""


def _refusal(run_dir: Path, held: list[Path]) -> RunLocked:
    """One line naming every process that holds a lock of the run."""
    who = ", ".join(f"{holder(p)} (lock {p.name})" for p in held)
    return RunLocked(
        f"{run_dir} is being trained by {who}; wait for it to finish, or stop "
        f"{'that process' if len(held) == 1 else 'those processes'}"
    )


def _alone(refused: bool) -> bool:
    """The vote of a process that starts a run alone: its own answer."""
    return refused


class _Held:
    """An ``flock`` held on ``path`` until the block ends; the file is
    removed when the block ends without an error (the run is then finished,
    which a later start checks after taking the lock); after an error it
    stays, so that no two later processes lock two files."""

    def __init__(self, path: Path):
        self.path = path
        self.fd: int | None = None

    def __exit__(self, exc_type, exc, tb) -> None:
        if self.fd is not None:
            if exc_type is None:
                self.path.unlink(missing_ok=True)
            os.close(self.fd)
            self.fd = None


class RunLock(_Held):
    """``with RunLock(run_dir):`` -- this process alone starts the run in
    ``run_dir``; a start while another process holds the run's lock or any
    rank lock (:class:`RankLock`) gets :class:`RunLocked` naming every
    holder, and changes no file.  ``check``: called once the lock is held,
    its exception a refusal as well (a run finished meanwhile).  Under
    torchrun or srun rank 0 takes it, and the other ranks learn from it
    whether to go on (:class:`RankLock`), so that none waits for the others:
    ``agree(refused) -> bool`` is that vote over the run's processes
    (:func:`negatives.runtime.distributed.agree`)."""

    NAME = ".pretrain.lock"

    def __init__(self, run_dir: str | os.PathLike, check=None, agree=_alone):
        super().__init__(Path(run_dir) / self.NAME)
        self.check, self.agree = check, agree

    def __enter__(self) -> RunLock:
        run = self.path.parent
        run.mkdir(parents=True, exist_ok=True)
        # the workers of a launcher that died without them: the run is theirs while they live
        ranks = [p for p in sorted(run.glob(RankLock.PATTERN)) if _held(p)]
        fd = None
        if ranks:  # refused: look at the run's lock, create or write nothing
            held = ([self.path] if _held(self.path) else []) + ranks
        else:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            held = [] if _flock(fd) else [self.path]
            # again, with the run's lock held: a dead launcher's worker that locked its file meanwhile is seen
            # here (one later than this finds its launcher gone and stops: die_with_parent)
            held += [p for p in sorted(run.glob(RankLock.PATTERN)) if _held(p)]
        error = _refusal(run, held) if held else None
        if error is None and self.check is not None:
            try:
                self.check()  # e.g. finished while the lock was held by others
            except Exception as e:
                error = e
        if self.agree(error is not None):
            if fd is not None:
                os.close(fd)  # unsigned: the file still names its last owner
            raise error if error is not None else RunLocked(f"{run}: another rank of this run was refused it")
        _sign(fd)
        self.fd = fd
        return self


class RankLock(_Held):
    """``with RankLock(run_dir, rank):`` -- a process of a run whose
    :class:`RunLock` its launcher or rank 0 holds: it keeps the run locked
    while it lives, even after that process is gone.  Under torchrun or srun
    it first waits for rank 0's :class:`RunLock` (:class:`RunLocked` when
    rank 0 was refused it)."""

    PATTERN = ".pretrain.rank*.lock"

    def __init__(self, run_dir: str | os.PathLike, rank: int, agree=_alone):
        super().__init__(Path(run_dir) / f".pretrain.rank{rank}.lock")
        self.agree = agree

    def __enter__(self) -> RankLock:
        if self.agree(False):
            raise RunLocked(f"{self.path.parent}: rank 0 of this run was refused it (its message says why)")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fd = try_lock(self.path)
        if self.fd is None:
            raise _refusal(self.path.parent, [self.path])
        return self


#: prctl(2)'s option: the signal this process gets when its parent ends
_PR_SET_PDEATHSIG = 1


def die_with_parent(parent: int, sig: int = signal.SIGTERM) -> bool:
    """Ask the kernel for ``sig`` when the parent process ``parent`` ends,
    however it ends (SIGKILL included); ``False`` when it has already ended
    (this process then belongs to nobody).  Linux only (``prctl``; elsewhere
    nothing is asked).  A trainer takes SIGTERM as a preemption: it saves
    ``last.pt`` and exits."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
    return os.getppid() == parent  # after the request: a parent gone before it is seen here
