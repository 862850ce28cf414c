"""The versions of the software that produced a file: recorded in every
checkpoint and ``probe.json``, so a number can be traced to what computed it."""

from __future__ import annotations

import platform

__all__ = ["versions"]


def versions() -> dict[str, str]:
    """``{"negatives", "torch", "torchvision", "python"}`` as they run now.

    >>> sorted(versions())
    ['negatives', 'python', 'torch', 'torchvision']
    """
    import torch
    import torchvision

    import negatives

    return {
        "negatives": negatives.__version__,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "python": platform.python_version(),
    }
