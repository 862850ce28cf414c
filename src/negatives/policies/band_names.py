"""The names of the paper's bands, ``keep[a,b)`` and ``drop[a,b)``: their grammar and their parser."""

from __future__ import annotations

import re

from .bands import Band, check_band
from .grammar import fields, malformed, numbers

__all__ = ["GRAMMAR", "parse"]

GRAMMAR = (
    "'keep[a,b)' or 'drop[a,b)' with 0 <= a < b <= 100 (percentiles of difficulty), "
    "'drop-same-class', 'drop[a,b)&same-class', 'drop[a,b)&other-class'"
)

#: the form; the bounds are read by the shared number reader (:mod:`.grammar`)
_BAND_RE = re.compile(r"^(keep|drop)\[([^\[\]()]*)\)$")


def parse(text: str) -> Band | None:
    """Parse the paper's bands; None for any other form.

    ``keep[a,b)``, ``drop[a,b)`` -> :class:`Band`; None when ``text`` is
    neither; :class:`PolicyError` when it is a band but malformed (the class
    filters, ``drop[a,b)&same-class``, are parsed first, by :mod:`.classes`).

    >>> parse("keep[95,100)").name, parse("drop[9.99e1_1E2)").name
    ('keep[95_100)', 'drop[99.9_100)')
    """
    t = text.strip()
    m = _BAND_RE.match(t)
    if not m:
        if re.match(r"^(keep|drop)\[", t):
            raise malformed(text, "band", GRAMMAR)
        return None
    lo, hi = numbers(fields(m.group(2)), text, "band", GRAMMAR, counts=(2,))
    check_band(lo, hi, text)
    return Band(m.group(1), lo, hi)
