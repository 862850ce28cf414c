"""The shared grammar of policy names: the number separator, the error type,
the one reader of numbers, the canonical form of a number, and the first step
of every family's parser.

Numbers.  Every number of every family is read by :func:`number` (a moving
value ``x->y`` by :func:`moving`), as :data:`NUMBER_FORMS` says: an optional
sign, decimal digits with an optional fraction (``95``, ``99.9``, ``5.``,
``.5``), an optional exponent (``1e-1``, ``1E1``, ``1e+1``); no digit
separators, no whitespace inside a number, ASCII digits only.  Whitespace is
allowed around a number, around its separator (``,`` or ``_``) and around
``->``.  NaN and infinity (written out, or a number too large for a float)
are refused.  A sign is read so that an out-of-range value (``keep[-5,10)``)
is refused by its family's range check, which names the range.  The
canonical name writes every number in its shortest decimal form
(:func:`fmt_number`), so ``1e1``, ``10.0`` and ``+10`` all name ``10``.
"""

from __future__ import annotations

import math
import re
from decimal import Decimal

from ..ranking import exact

__all__ = [
    "NUMBER_FORMS",
    "SEP",
    "PolicyError",
    "exact",
    "fields",
    "fmt_number",
    "malformed",
    "match_form",
    "moving",
    "number",
    "numbers",
    "refuse_non_finite",
]

#: the separator of numbers in canonical policy names (folder names): never a
#: comma, which Snakemake cannot pass in a wildcard to a cluster job (its
#: --target-jobs splits on commas); the parser reads both
SEP = "_"

#: the numbers a policy name may write, in words (the module docstring)
NUMBER_FORMS = "numbers as 95, 99.9, .5 or 1e-1, separated by ',' or '_'"

#: one number (the only number pattern of the policy grammar): sign, digits
#: with an optional fraction or a fraction alone, optional exponent; [0-9],
#: never \d, which would take other scripts' digits that float() reads
_NUMBER = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
#: NaN and infinity spelled out (not inside a word: 'linear' holds no 'inf')
_NON_FINITE_WORD = re.compile(r"(?<![a-z])(nan|inf|infinity)(?![a-z])", re.IGNORECASE)


class PolicyError(ValueError):
    """A policy string that cannot be parsed or makes no sense."""


def fmt_number(x: float) -> str:
    """A number in its shortest decimal form, every digit kept (for canonical names).

    Shortest decimal form, every digit kept: 95.0 -> '95', 99.9 -> '99.9',
    12.3456789 -> '12.3456789' (a name must say the exact band it runs)."""
    text = repr(float(x) + 0.0)  # + 0.0: -0 is 0, one name for one policy
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
        raise malformed(text, f"{prefix} policy", grammar)
    return m


def malformed(text: str, form: str, grammar: str, why: str = "") -> PolicyError:
    """The one-line refusal of a policy of a known form written wrongly.

    ``policy 'text': malformed <form> (<why>); allowed: <grammar>``."""
    detail = f" ({why})" if why else ""
    return PolicyError(f"policy {text!r}: malformed {form}{detail}; allowed: {grammar}")


def fields(inner: str) -> list[str]:
    """The fields between a policy's brackets, split on ``,`` or ``_``, stripped.

    >>> fields(" 100 -> 10_10, linear ")
    ['100 -> 10', '10', 'linear']
    """
    return [f.strip() for f in inner.replace(SEP, ",").split(",")]


def number(field: str, text: str) -> float | None:
    """Read one number of a policy name: the float ``field`` writes, or None.

    The one reader of numbers of every family (forms: the module
    docstring): ``'1e-1'``, ``' 0.1 '`` and ``'.1'`` read 0.1, ``'-0'``
    reads 0; None when ``field`` is not a number.  :class:`PolicyError`
    naming ``text`` (the whole policy) when it writes NaN or infinity.

    >>> number("1E1", "ring[1E1_10]"), number("ten", "ring[ten_10]")
    (10.0, None)
    """
    t = field.strip()
    word = _NON_FINITE_WORD.fullmatch(t.lstrip("+-"))
    if word:
        raise _not_finite_word(text, word.group(1))
    if not _NUMBER.fullmatch(t):
        return None
    return _finite(t, text)


def numbers(items: list[str], text: str, form: str, grammar: str, counts: tuple[int, ...] = ()) -> list[float]:
    """Every one of ``items`` read by :func:`number`.

    :func:`malformed` names the first item that is not a number, or the
    count of items when it is not one of ``counts`` (when given)."""
    if counts and len(items) not in counts:
        wanted = " or ".join(map(str, counts))
        raise malformed(text, form, grammar, f"{len(items)} number{'s' * (len(items) != 1)}, not {wanted}")
    values = []
    for item in items:
        v = number(item, text)
        if v is None:
            raise malformed(text, form, grammar, f"{item!r} is not a number")
        values.append(v)
    return values


def moving(field: str, text: str, form: str, grammar: str) -> tuple[float, float]:
    """Read a value that is fixed or moves: ``x`` -> ``(x, x)``, ``x->y`` -> ``(x, y)``.

    Whitespace is allowed around the arrow; :func:`malformed` names a side
    that is not a number.

    >>> moving("100 -> 1e1", "ring[100 -> 1e1_10]", "ring policy", "...")
    (100.0, 10.0)
    """
    start, arrow, end = field.partition("->")
    v = numbers([start, end] if arrow else [start], text, form, grammar)
    return (v[0], v[-1])


def _not_finite_word(text: str, word: str) -> PolicyError:
    return PolicyError(f"policy {text!r}: {word} is not a finite number (NaN and infinity are refused)")


def _finite(written: str, text: str) -> float:
    """``written`` (a match of the number pattern) as a float; refused when it overflows to infinity."""
    v = float(written)
    if not math.isfinite(v):
        shown = written if len(written) <= 12 else f"{written[:12]}... ({len(written)} characters)"
        raise PolicyError(
            f"policy {text!r}: the number {shown} is too large to be finite (NaN and infinity are refused)"
        )
    return v + 0.0


def refuse_non_finite(text: str) -> None:
    """Refuse a policy string that holds NaN or infinity.

    :class:`PolicyError` when ``text`` holds NaN or infinity, written out
    or as a number too large for a float (``9...9`` with 400 digits reads as
    inf), before any family's parser turns it into one."""
    m = _NON_FINITE_WORD.search(text)
    if m:
        raise _not_finite_word(text, m.group(1))
    for m in _NUMBER.finditer(text):
        _finite(m.group(0), text)
