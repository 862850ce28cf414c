"""Checkpoints that survive being killed: a verified rolling pair
(``last.pt`` and ``last.prev.pt``), and a stop on SIGTERM/SIGUSR1 at the next
step boundary with an exit status that asks for a requeue.

File format of the rolling checkpoints (docs/INTERFACES.md)::

    8 bytes  magic  b"NEGCKPT1"
    8 bytes  payload length, unsigned big-endian
   32 bytes  SHA-256 of the payload
    payload  the bytes of ``torch.save(state)``

A checkpoint whose magic, length or checksum does not match, or whose payload
``torch.load`` cannot read, is *corrupt*; :func:`load_latest` then falls back
to the previous one.  Writes go to ``NAME.tmp``, are fsynced and renamed, and
the current file is renamed to ``last.prev.pt`` first, so at every instant at
least one complete checkpoint is on disk (after the first save).

Preemption: :class:`StopSignals` turns SIGTERM and SIGUSR1 into a flag the
training loop reads between steps; the loop saves and raises
:class:`Preempted`, a ``SystemExit`` with status :data:`REQUEUE_EXIT_CODE`
(75, ``EX_TEMPFAIL``: "temporary failure, try again").  Ctrl-C (SIGINT) stops
the same way with status :data:`INTERRUPT_EXIT_CODE` (130, as a shell reports
it); a second Ctrl-C before the step ends stops at once.  Under SLURM,
``RequeueExit=75`` in slurm.conf requeues a batch job that exits so; under
Snakemake, the job fails and ``retries`` submits it again, and the new job
resumes from the checkpoint.
"""

from __future__ import annotations

import hashlib
import io
import os
import signal
import struct
from pathlib import Path

import torch

from .atomic import write_failed

__all__ = [
    "MAGIC",
    "REQUEUE_EXIT_CODE",
    "INTERRUPT_EXIT_CODE",
    "STOP_SIGNALS",
    "CorruptCheckpoint",
    "Preempted",
    "StopSignals",
    "save_rolling",
    "load_verified",
    "load_latest",
    "previous_path",
    "rng_state",
    "set_rng_state",
]

MAGIC = b"NEGCKPT1"
_HEADER = struct.Struct(">8sQ32s")  # magic, payload length, sha256
REQUEUE_EXIT_CODE = 75  # sysexits.h EX_TEMPFAIL; SLURM: RequeueExit=75
INTERRUPT_EXIT_CODE = 130  # 128 + SIGINT: what a shell reports for Ctrl-C
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)


class CorruptCheckpoint(ValueError):
    """A checkpoint file that is truncated, altered or unreadable."""


class Preempted(SystemExit):
    """Raised after the checkpoint of a stop request is on disk; exits the
    process with ``code`` (:data:`REQUEUE_EXIT_CODE`; :data:`INTERRUPT_EXIT_CODE`
    after Ctrl-C) unless caught."""

    def __init__(self, message: str, code: int = REQUEUE_EXIT_CODE):
        super().__init__(code)
        self.message = message

    def __str__(self) -> str:
        return self.message

    @classmethod
    def saved(cls, signal_name: str | None, path, epoch: int, step: int) -> Preempted:
        """The stop after ``path`` was saved at ``epoch`` / ``step`` on
        ``signal_name`` (``None``: a stop asked of another process)."""
        if signal_name == "SIGINT":  # a user at a terminal: no requeue to speak of
            return cls(
                f"interrupted: saved {path} at epoch {epoch} step {step}; run the same command again to resume",
                INTERRUPT_EXIT_CODE,
            )
        return cls(
            f"{signal_name or 'a stop on another process'}: saved {path} at epoch {epoch} step {step}; "
            f"start the job again to resume (exit status {REQUEUE_EXIT_CODE}: requeue)"
        )


def previous_path(path: Path) -> Path:
    """``last.pt -> last.prev.pt``: where the checkpoint before ``path`` lives."""
    path = Path(path)
    return path.with_name(f"{path.stem}.prev{path.suffix}")


def _encode(state: dict) -> bytes:
    """The framed bytes of ``state``: header (magic, length, sha256) + torch.save payload."""
    buf = io.BytesIO()
    torch.save(state, buf)
    payload = buf.getvalue()
    return _HEADER.pack(MAGIC, len(payload), hashlib.sha256(payload).digest()) + payload


def _fsync_dir(directory: Path) -> None:
    """Make the renames in ``directory`` durable (best effort where unsupported)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_durably(data: bytes, path: Path) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def save_rolling(state: dict, path: str | os.PathLike) -> Path:
    """Write ``state`` to ``path`` atomically, keeping the previous file as
    ``previous_path(path)``.  Returns ``path``."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        _write_durably(_encode(state), tmp)
    except OSError as e:  # a full disk, say: no half file left, the previous checkpoints untouched
        tmp.unlink(missing_ok=True)
        raise write_failed(path, e) from e
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if path.exists():
        os.replace(path, previous_path(path))
    os.replace(tmp, path)
    _fsync_dir(path.parent)
    return path


def load_verified(path: str | os.PathLike, map_location="cpu") -> dict:
    """Read a checkpoint written by :func:`save_rolling`, checking its magic,
    length and SHA-256 before ``torch.load``.  Raises :class:`CorruptCheckpoint`."""
    path = Path(path)
    data = path.read_bytes()
    if len(data) < _HEADER.size:
        raise CorruptCheckpoint(f"{path}: {len(data)} bytes, shorter than the {_HEADER.size}-byte header (truncated)")
    magic, length, digest = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise CorruptCheckpoint(f"{path}: not a negatives checkpoint (magic {magic!r}, expected {MAGIC!r})")
    payload = data[_HEADER.size :]
    if len(payload) != length:
        raise CorruptCheckpoint(f"{path}: payload is {len(payload)} bytes, the header says {length} (truncated)")
    if hashlib.sha256(payload).digest() != digest:
        raise CorruptCheckpoint(f"{path}: SHA-256 of the payload does not match the header (corrupted)")
    try:
        return torch.load(io.BytesIO(payload), map_location=map_location, weights_only=False)
    except Exception as e:  # a valid checksum over bytes torch cannot read
        raise CorruptCheckpoint(f"{path}: torch.load failed: {e}") from e


def load_latest(path: str | os.PathLike, map_location="cpu", log=print) -> tuple[dict, Path] | None:
    """The newest complete checkpoint among ``path`` and ``previous_path(path)``:
    ``(state, file)``, or ``None`` when neither exists.  A corrupt file is
    reported through ``log`` and skipped; when every existing file is corrupt,
    raises :class:`CorruptCheckpoint` naming them."""
    path = Path(path)
    problems = []
    for candidate in (path, previous_path(path)):
        if not candidate.exists():
            continue
        try:
            state = load_verified(candidate, map_location)
        except CorruptCheckpoint as e:
            problems.append(str(e))
            log(f"checkpoint {candidate} is unusable ({e}); trying the previous one")
            continue
        return state, candidate
    if problems:
        raise CorruptCheckpoint(
            "no usable checkpoint: "
            + "; ".join(problems)
            + f". Delete {path} and {previous_path(path)} to start the run afresh"
        )
    return None


class StopSignals:
    """Context manager: while active, SIGTERM, SIGUSR1 and SIGINT set
    :attr:`requested` (the signal's name) instead of killing the process (a
    second SIGINT raises ``KeyboardInterrupt``); the previous handlers come
    back on exit.  Only the main thread can install handlers; elsewhere
    it does nothing (and ``requested`` stays ``None``)."""

    def __init__(self, signals=STOP_SIGNALS):
        self.signals = tuple(signals)
        self.requested: str | None = None
        self._previous: dict = {}

    def _handle(self, signum, frame) -> None:
        if signum == signal.SIGINT and self.requested == "SIGINT":  # Ctrl-C twice: do not wait for the step
            raise KeyboardInterrupt
        self.requested = signal.Signals(signum).name

    def __enter__(self) -> StopSignals:
        try:
            for sig in self.signals:
                self._previous[sig] = signal.signal(sig, self._handle)
        except ValueError:  # not the main thread
            self._restore()
        return self

    def _restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def __exit__(self, *exc) -> None:
        self._restore()


def rng_state(device: torch.device) -> dict:
    """The global generators' states (CPU, and the device's on CUDA): what a
    mid-epoch resume restores so augmentation draws continue exactly."""
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, device: torch.device) -> None:
    """Restore what :func:`rng_state` captured."""
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)
