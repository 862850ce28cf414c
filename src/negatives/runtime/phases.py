"""One line per phase of a job that takes a while (embedding the images,
fitting a probe, drawing a figure), so that its log says what it is doing."""

from __future__ import annotations

import sys

__all__ = ["phase"]


def phase(what: str) -> None:
    """Say ``what`` the job does next, on stdout (its log under the workflow), at once."""
    print(what, file=sys.stdout, flush=True)
