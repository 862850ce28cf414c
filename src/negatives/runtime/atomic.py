"""Files that readers see whole: the old version or the new, never half of one.

Every output the workflow declares is written through :func:`atomic_write`,
so a job killed while writing leaves no truncated file that Snakemake would
take for finished.  (Checkpoints, which must also survive a power cut and
keep the previous one, have their own fsynced, rolling writer in
:mod:`negatives.runtime.checkpoint`.)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

__all__ = ["atomic_write", "atomic_torch_save", "torch_load", "check_writable"]


def atomic_write(path: str | os.PathLike, write: Callable[[Path], object]) -> Path:
    """``write(tmp)`` into a hidden temporary file beside ``path`` (one per
    process), then rename it onto ``path``.  Creates the parent folder; on
    any error the temporary file is removed and ``path`` is left as it was.
    Returns ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def atomic_torch_save(obj, path: str | os.PathLike) -> Path:
    """``torch.save(obj, path)`` through :func:`atomic_write` (prepared data,
    finished checkpoints).  Returns ``path``."""
    import torch

    return atomic_write(path, lambda tmp: torch.save(obj, tmp))


def torch_load(path: str | os.PathLike, what: str, rebuild: str):
    """``torch.load`` of a file we wrote, on CPU; a missing, truncated or
    foreign file is one :class:`ValueError` (``FileNotFoundError`` when
    missing) naming ``path``, what it should be and how to ``rebuild`` it."""
    import pickle

    import torch

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no {what} there; {rebuild}")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except (pickle.UnpicklingError, EOFError, RuntimeError, ValueError, AttributeError, ImportError) as e:
        raise ValueError(f"{path} is not a complete {what} ({type(e).__name__}: {str(e).splitlines()[0][:120]}); "
                         f"delete it and {rebuild}") from None


def check_writable(path: str | os.PathLike) -> None:
    """Raise :class:`PermissionError` naming the folder when ``path`` cannot be
    written (its nearest existing ancestor is not writable): before the work
    whose result would go there."""
    folder = Path(path).absolute().parent
    while not folder.exists():
        folder = folder.parent
    if not os.access(folder, os.W_OK | os.X_OK):
        raise PermissionError(f"{folder} is not writable, so {path} cannot be written; choose another --out")
