"""Files that readers see whole: the old version or the new, never half of one.

Every output the workflow declares is written through :func:`atomic_write`,
so a job killed while writing leaves no truncated file that Snakemake would
take for finished.  (Checkpoints, which must also survive a power cut and
keep the previous one, have their own fsynced, rolling writer in
:mod:`negatives.checkpoint`.)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

__all__ = ["atomic_write", "atomic_torch_save"]


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
