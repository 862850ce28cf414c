"""Schedules: how a value moves from its start to its end over training.

A ring's outer ball and a curriculum's band bounds move by one of these
(:mod:`negatives.policies.ring`).  A value moves from ``v0`` (start of training)
to ``v1`` as ``v(p) = v0 + (v1 - v0) f(min(p / u, 1))``, ``p`` in ``[0, 1]``
the progress and ``u`` the share of training the move takes (the optional
last field of a name, in percent, default 100), with ``f(0) = 0`` and (except
``constant``) ``f(1) = 1``:

==================  =========================================================
``constant``        ``f(x) = 0``: the value stays at ``v0`` (needs v0 = v1)
``linear``          ``f(x) = x``
``stepS``           ``S >= 2`` equal stages (``step`` = ``step10``, as Wu et
                    al.'s code, which goes down by tenths):
                    ``f(x) = min(floor(S x), S - 1) / (S - 1)``, so stage
                    ``k`` holds ``v0 + (v1 - v0) k / (S - 1)``
``expL``            exponential approach, rate ``L > 0`` (``exp`` = ``exp5``):
                    ``f(x) = (1 - e^{-L x}) / (1 - e^{-L})``
==================  =========================================================

``constant``, ``linear`` and ``stepS`` are evaluated in exact rational
arithmetic (the trainer passes ``progress`` as the exact fraction
``step / total_steps``; a float is taken as its shortest decimal); ``expL``
is rounded to 1e-9.  Every ``f`` is monotone and so is every window's size
in the moving value, so checking the two ends
(:meth:`negatives.policies.ring.ScheduledBand.validate`) checks every step.  Epoch ``e`` (0-based) starts at ``p = e / epochs``; the
last step runs at ``(T - 1) / T``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from fractions import Fraction

from ..ranking import exact
from .grammar import SEP, PolicyError, fmt_number, number

__all__ = ["Schedule", "parse_schedule", "SCHEDULE_GRAMMAR"]

SCHEDULE_GRAMMAR = (
    "'constant', 'linear', 'step' or 'stepS' (S >= 2 stages, default 10), "
    "'exp' or 'expL' (rate L > 0, default 5), optionally followed by ',u': the percent of "
    "training the move takes (0 < u <= 100, default 100)"
)

_ROUND = 9  # decimals kept of an exponential schedule's value


@dataclass(frozen=True)
class Schedule:
    """How a value moves from ``v0`` to ``v1`` over training (module docstring).

    kind:  'constant', 'linear', 'step' or 'exp';
    param: the number of stages (step) or the rate (exp); None otherwise;
    until: the percent of training the move takes (then ``v1`` is held).
    """

    kind: str
    param: float | None = None
    until: float = 100.0

    def __post_init__(self):
        kind, param = self.kind, self.param
        if kind not in ("constant", "linear", "step", "exp"):
            raise PolicyError(f"unknown schedule {kind!r}; allowed: {SCHEDULE_GRAMMAR}")
        if kind == "step" and (param is None or param != int(param) or param < 2):
            raise PolicyError(
                f"schedule 'step{param}': needs a whole number of stages >= 2; allowed: {SCHEDULE_GRAMMAR}"
            )
        if kind == "exp" and (param is None or not param > 0):
            raise PolicyError(f"schedule 'exp{param}': needs a rate > 0; allowed: {SCHEDULE_GRAMMAR}")
        if not 0 < self.until <= 100:
            raise PolicyError(
                f"schedule {kind!r}: the share of training must lie in (0, 100], got "
                f"{fmt_number(self.until)}; allowed: {SCHEDULE_GRAMMAR}"
            )

    @property
    def name(self) -> str:
        """``linear``, ``step10``, ``exp5``; with ``_u`` when the move takes ``u`` < 100% of training."""
        kind = self.kind
        if kind == "step":
            kind = f"step{int(self.param)}"
        elif kind == "exp":
            kind = f"exp{fmt_number(self.param)}"
        return kind if self.until == 100 or self.kind == "constant" else f"{kind}{SEP}{fmt_number(self.until)}"

    def fraction(self, progress) -> Fraction | float:
        """``f(min(p / u, 1))`` in ``[0, 1]``: the share of the way from ``v0``
        to ``v1`` (exact, but for ``exp``)."""
        p = min(max(exact(progress), Fraction(0)), Fraction(1))
        x = min(p * 100 / exact(self.until), Fraction(1))
        if self.kind == "constant":
            return Fraction(0)
        if self.kind == "linear":
            return x
        if self.kind == "step":
            s = int(self.param)
            return Fraction(min(math.floor(s * x), s - 1), s - 1)
        rate = float(self.param)
        return (1.0 - math.exp(-rate * float(x))) / (1.0 - math.exp(-rate))

    def value(self, v0, v1, progress) -> Fraction:
        """``v(p) = v0 + (v1 - v0) f(min(p / u, 1))``, exact (``exp``: rounded to 1e-9)."""
        v0, v1 = exact(v0), exact(v1)
        if v0 == v1:
            return v0
        f = self.fraction(progress)
        if isinstance(f, Fraction):
            return v0 + (v1 - v0) * f
        return exact(round(float(v0) + float(v1 - v0) * f, _ROUND))


#: schedule names and their kinds; a step or exp schedule may be followed by its number
_SCHEDULE_KINDS = {"constant": "constant", "linear": "linear", "step": "step", "exp": "exp", "exponential": "exp"}
_SCHEDULE_DEFAULTS = {"step": 10.0, "exp": 5.0}


def parse_schedule(text: str, until: float | None = None) -> Schedule:
    """Parse a schedule name (and the percent of training it takes).

    ``'linear'``, ``'step4'``, ``'exp2.5'``, ``'exp1e-1'``, ... (and the
    percent of training the move takes, default 100) -> :class:`Schedule`;
    a stage count or rate is read by :func:`~negatives.policies.grammar.number`."""
    t = text.strip()
    m = re.fullmatch(r"([a-z]+)(.*)", t)
    kind = _SCHEDULE_KINDS.get(m.group(1)) if m else None
    written = m.group(2) if m else ""
    param = number(written, t) if written and kind in _SCHEDULE_DEFAULTS else _SCHEDULE_DEFAULTS.get(kind)
    # only step and exp take a number ('linear5' is no schedule)
    if kind is None or written and (kind not in _SCHEDULE_DEFAULTS or param is None):
        raise PolicyError(f"unknown schedule {text!r}; allowed: {SCHEDULE_GRAMMAR}")
    return Schedule(kind, param, until=100.0 if until is None else float(until))
