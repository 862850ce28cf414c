"""The shared grammar of policy names: the number separator, the error type,
the canonical form of a number, and the first step of every family's parser."""

from __future__ import annotations

import math
import re
from decimal import Decimal

from ..ranking import exact

__all__ = ["SEP", "PolicyError", "exact", "fmt_number", "match_form", "refuse_non_finite"]

#: the separator of numbers in canonical policy names (folder names): never a
#: comma, which Snakemake cannot pass in a wildcard to a cluster job (its
#: --target-jobs splits on commas); the parser reads both
SEP = "_"


class PolicyError(ValueError):
    """A policy string that cannot be parsed or makes no sense."""


def fmt_number(x: float) -> str:
    """A number in its shortest decimal form, every digit kept (for canonical names).

    Shortest decimal form, every digit kept: 95.0 -> '95', 99.9 -> '99.9',
    12.3456789 -> '12.3456789' (a name must say the exact band it runs)."""
    text = repr(float(x))
    if "e" in text:
        text = format(Decimal(text), "f")
    return text[:-2] if text.endswith(".0") else text


def match_form(text: str, prefix: str, pattern: re.Pattern, grammar: str) -> re.Match | None:
    """The first step of every family's parser: match, not of this form, or malformed.

    The match of ``pattern`` when ``text`` is a policy of the form
    ``prefix[...]``; None when it is of another form; :class:`PolicyError`
    naming ``grammar`` when it is of this form but malformed.  Every
    policy module's ``parse`` starts here."""
    t = text.strip()
    if not re.match(rf"^{re.escape(prefix)}\b", t):
        return None
    m = pattern.match(t)
    if not m:
        raise PolicyError(f"policy {text!r}: malformed {prefix} policy; allowed: {grammar}")
    return m


#: NaN and infinity spelled out (not inside a word: 'linear' holds no 'inf')
_NON_FINITE_WORD = re.compile(r"(?<![a-z])(nan|inf|infinity)(?![a-z])", re.IGNORECASE)
#: every number as the families' parsers read it
_NUMBER = re.compile(r"[0-9]+(?:\.[0-9]*)?(?:e-?[0-9]+)?")


def refuse_non_finite(text: str) -> None:
    """Refuse a policy string that holds NaN or infinity.

    :class:`PolicyError` when ``text`` holds NaN or infinity, written out
    or as a number too large for a float (``9...9`` with 400 digits reads as
    inf), before any family's parser turns it into one."""
    m = _NON_FINITE_WORD.search(text)
    if m:
        raise PolicyError(f"policy {text!r}: {m.group(1)} is not a finite number (NaN and infinity are refused)")
    for m in _NUMBER.finditer(text):
        number = m.group(0)
        if not math.isfinite(float(number)):
            shown = number if len(number) <= 12 else f"{number[:12]}... ({len(number)} characters)"
            raise PolicyError(f"policy {text!r}: the number {shown} is too large to be finite "
                              "(NaN and infinity are refused)")
