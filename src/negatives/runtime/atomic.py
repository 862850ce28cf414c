"""Files that readers see whole, and readers that know when one is not.

Every output the workflow declares is written through :func:`atomic_write`,
so a job killed while writing leaves no truncated file that Snakemake would
take for finished.  Beside each such file it keeps a *check file*,
``.NAME.sha256`` (JSON: the file's byte count and SHA-256), and every reader
of our files calls :func:`verify` first: a file damaged or changed after it
was written (a disk that filled up, a half copy, an edit) is one error that
names it and says how to rebuild it, not a parser's traceback.  A file with
no check file beside it (written by hand, or by an older version) is read
unverified.  (Rolling checkpoints, which must also survive a power cut and
keep the previous one, carry the same length and SHA-256 inside the file:
:mod:`negatives.runtime.checkpoint`.)

A write that fails for lack of space or permission is one :class:`WriteFailed`
naming the path, and leaves neither a temporary file nor a changed target.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path

__all__ = [
    "WriteFailed",
    "atomic_write",
    "atomic_torch_save",
    "check_path",
    "verify",
    "verify_existing",
    "torch_load",
    "check_writable",
    "write_failed",
]

#: errors of the place written to, not of the program: said in one line
_PLACE_ERRORS = {
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is used up",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
}


class WriteFailed(OSError):
    """A file that could not be written where it belongs (full disk, quota,
    read-only or forbidden folder); the message names the path."""

    def __str__(self) -> str:
        return self.args[0]


def write_failed(path: Path, error: OSError) -> OSError:
    """``error`` as a :class:`WriteFailed` naming ``path`` and what to do, when
    it is a fault of the place (space, permission); otherwise ``error``."""
    reason = _PLACE_ERRORS.get(error.errno)
    if reason is None:
        return error
    hint = (
        "free some space there and run again"
        if error.errno in (errno.ENOSPC, errno.EDQUOT)
        else "write somewhere else, or make the folder writable"
    )
    return WriteFailed(f"cannot write {path}: {reason} ({os.strerror(error.errno)}); {hint}")


def check_path(path: str | os.PathLike) -> Path:
    """``results/x/probe.json -> results/x/.probe.json.sha256``: where the
    byte count and SHA-256 of ``path`` are kept."""
    path = Path(path)
    return path.with_name(f".{path.name}.sha256")


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def atomic_write(path: str | os.PathLike, write: Callable[[Path], object]) -> Path:
    """``write(tmp)`` into a hidden temporary file beside ``path`` (one per
    process), then rename it onto ``path`` and record its check file.
    Creates the parent folder; on any error the temporary files are removed
    and ``path`` is left as it was.  Returns ``path``."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    check = check_path(path)
    check_tmp = check.with_name(f"{check.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write(tmp)
        record = json.dumps({"bytes": tmp.stat().st_size, "sha256": _sha256(tmp)}) + "\n"
        check.unlink(missing_ok=True)  # until the new record is in place the file reads as unverified, never damaged
        os.replace(tmp, path)
        check_tmp.write_text(record)
        os.replace(check_tmp, check)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        check_tmp.unlink(missing_ok=True)
        raise write_failed(path, e) from e
    except BaseException:
        tmp.unlink(missing_ok=True)
        check_tmp.unlink(missing_ok=True)
        raise
    return path


def atomic_torch_save(obj, path: str | os.PathLike) -> Path:
    """``torch.save(obj, path)`` through :func:`atomic_write` (prepared data,
    finished checkpoints).  Returns ``path``."""
    import torch

    return atomic_write(path, lambda tmp: torch.save(obj, tmp))


def verify(path: str | os.PathLike, what: str, rebuild: str, full: bool = True) -> Path:
    """Check ``path`` against the check file :func:`atomic_write` left beside
    it: its byte count, and (``full``) its SHA-256.  A missing file is a
    ``FileNotFoundError``, a different one a ``ValueError``; both name
    ``path``, ``what`` it should be and how to ``rebuild`` it.  Returns ``path``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no {what} there; {rebuild}")
    check = check_path(path)
    try:
        record = json.loads(check.read_text())
        size, digest = int(record["bytes"]), str(record["sha256"])
    except FileNotFoundError:
        return path  # not written by atomic_write: nothing to compare with
    except (ValueError, KeyError, TypeError, OSError):
        raise ValueError(f"{check}, the check file of {path}, is damaged; delete both and {rebuild}") from None
    accept = f"delete it and {rebuild} (or delete {check.name} beside it to use it as it is)"
    actual = path.stat().st_size
    if actual != size:
        raise ValueError(f"{path} is damaged: {actual} bytes, but {size} were written ({what}); {accept}")
    if full and _sha256(path) != digest:
        raise ValueError(f"{path} is damaged: its SHA-256 differs from the one written with it ({what}); {accept}")
    return path


#: files up to this size are hashed when planned; larger ones only measured
PLAN_HASH_BYTES = 8 << 20


def verify_existing(paths: Iterable[str | os.PathLike], rebuild: str = "run the workflow again") -> list[str]:
    """Check the files of ``paths`` that exist already (a workflow's inputs,
    when it plans its jobs): byte counts always, SHA-256 up to
    :data:`PLAN_HASH_BYTES`.  A damaged one raises ``ValueError`` before any
    job could remove the outputs built from it.  Returns ``paths`` as strings."""
    paths = [str(p) for p in paths]
    for p in paths:
        if os.path.isfile(p):
            verify(p, "an input of the workflow", rebuild, full=os.path.getsize(p) <= PLAN_HASH_BYTES)
    return paths


def torch_load(path: str | os.PathLike, what: str, rebuild: str):
    """``torch.load`` of a file we wrote, on CPU, after :func:`verify`; a
    missing, damaged or foreign file is one :class:`ValueError`
    (``FileNotFoundError`` when missing) naming ``path``, what it should be
    and how to ``rebuild`` it."""
    import pickle

    import torch

    path = verify(path, what, rebuild)
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except (pickle.UnpicklingError, EOFError, RuntimeError, ValueError, AttributeError, ImportError) as e:
        raise ValueError(
            f"{path} is not a complete {what} ({type(e).__name__}: {str(e).splitlines()[0][:120]}); "
            f"delete it and {rebuild}"
        ) from None


def check_writable(path: str | os.PathLike, need_bytes: int = 0) -> None:
    """Before the work whose result goes to ``path``: raise
    :class:`WriteFailed` naming the folder when a file cannot be created in
    it (tried, so a read-only file system is found even by root), or when
    its file system has less than ``need_bytes`` free."""
    path = Path(path).absolute()
    folder = path.parent
    while not folder.exists():
        folder = folder.parent
    probe = folder / f".negatives-write-test.{os.getpid()}.tmp"
    try:
        probe.touch()
        probe.unlink()
    except OSError as e:
        raise WriteFailed(
            f"{folder} is not writable ({os.strerror(e.errno or errno.EACCES)}), so {path} cannot be "
            "written; choose another folder"
        ) from None
    free = shutil.disk_usage(folder).free
    if free < need_bytes:
        raise WriteFailed(
            f"{folder} has {free / 2**20:.0f} MiB free, but {path} needs about "
            f"{need_bytes / 2**20:.0f} MiB; free some space there and run again"
        )
