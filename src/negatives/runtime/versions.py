"""The versions of the software that produced a file: recorded in every
checkpoint and ``probe.json``, so a number can be traced to what computed it."""

from __future__ import annotations

import platform
from importlib import metadata

__all__ = ["versions"]


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def versions() -> dict[str, str | None]:
    """``{"negatives", "torch", "torchvision", "python"}`` as installed now
    (``None`` for one that is not installed as a package: a checkout run from
    its ``src`` folder).

    >>> sorted(versions())
    ['negatives', 'python', 'torch', 'torchvision']
    """
    import torch

    return {"negatives": _version("negatives"), "torch": torch.__version__,
            "torchvision": _version("torchvision"), "python": platform.python_version()}
