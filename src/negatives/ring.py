"""Bands of negatives whose bounds move over training: Ring and curricula.

Percentiles are those of EXPERIMENTS.md section 2 (0 = easiest, 100 =
hardest; a band ``[a, b)`` holds exactly ``round(K (b - a) / 100)`` of a
query's K candidates, placed by :func:`negatives.policies.band_ranks`).  Here
the bounds are functions of ``progress``, the fraction of training done, and
are re-evaluated at every step, so the count is exact at each step.

Schedules (:class:`Schedule`).  A bound moves from ``v0`` (start of
training) to ``v1`` (end) as ``v(p) = v0 + (v1 - v0) f(p)``, ``p`` in
``[0, 1]``, with ``f(0) = 0`` and (except ``constant``) ``f(1) = 1``:

==================  =========================================================
``constant``        ``f(p) = 0``: the bound stays at ``v0`` (needs v0 = v1)
``linear``          ``f(p) = p``
``stepS``           ``S >= 2`` equal stages (``step`` = ``step10``, as Wu et
                    al.'s code, which goes down by tenths):
                    ``f(p) = min(floor(S p), S - 1) / (S - 1)``, so stage
                    ``k`` holds ``v0 + (v1 - v0) k / (S - 1)`` for
                    ``p in [k/S, (k+1)/S)`` and the last stage is ``v1``
``expL``            exponential approach, rate ``L > 0`` (``exp`` = ``exp5``):
                    ``f(p) = (1 - e^{-L p}) / (1 - e^{-L})``: fast at first,
                    slow near the end, exactly ``v1`` at ``p = 1``
==================  =========================================================

Every ``f`` is monotone, so a band's width ``(b - a)(p)`` lies between its
widths at ``p = 0`` and ``p = 1`` when both bounds share one schedule:
checking the two ends (:meth:`ScheduledBand.validate`) checks every step.
Values are rounded to 1e-9 so float noise never moves a count.  The
trainer passes ``p = step / total_steps``, so epoch ``e`` (0-based) starts at
``p = e / epochs`` and the last step runs at ``(T - 1) / T``: a ``linear``
bound is within one step of ``v1`` at the end, a ``stepS`` one reaches it for
the last ``1/S`` of training.

Ring (Wu et al. 2020, "Conditional negative sampling").  Negatives are
restricted to a ring around the query: not closer than an *inner* threshold
(the hardest are excluded), not farther than an *outer* threshold, and the
ring is annealed by moving the outer threshold in towards the query.  In our
percentiles of similarity the outer threshold is the *lower* bound ``a``
(the easy side; Wu et al. count it from the nearest, as the upper percentile
of distance) and the inner threshold is the upper bound ``b``:
``ring[0->90,100,linear]`` starts with every negative and ends with the
hardest 10% (Wu et al.'s code: outer 1.0 -> 0.1, inner 0).  Either bound may
be written ``x`` (fixed) or ``x->y`` (moving); both share the schedule.

Curriculum (Cai et al.'s suggested future work): the same object written
band-to-band, ``curriculum[a0,b0->a1,b1,schedule]``, e.g.
``curriculum[0,100->95,100,linear]`` goes from ``keep[0,100)`` (all) to
``keep[95,100)`` (the hardest 5%).

Canonical names (also results folder names: no '/'): numbers in shortest
form (``_fmt``), a fixed bound without an arrow, ``constant`` when nothing
moves, and the schedule always written with its parameter (``step10``,
``exp5``).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from torch import Tensor

from .policies import (SEP, Candidates, NegativePolicy, PolicyError, Selection, _fmt, _rank_window, match_form,
                       band_ranks)

__all__ = ["Schedule", "ScheduledBand", "parse_schedule", "parse", "GRAMMAR", "RING_GRAMMAR",
           "CURRICULUM_GRAMMAR", "SCHEDULE_GRAMMAR"]

SCHEDULE_GRAMMAR = ("'constant', 'linear', 'step' or 'stepS' (S >= 2 stages, default 10), "
                    "'exp' or 'expL' (rate L > 0, default 5)")
RING_GRAMMAR = (f"'ring[a,b,schedule]' with each of a, b a percentile 'x' or a moving one 'x->y' "
                f"(0 <= a < b <= 100 at start and end; a is Wu et al.'s annealed outer bound), "
                f"schedule one of {SCHEDULE_GRAMMAR}")
CURRICULUM_GRAMMAR = (f"'curriculum[a0,b0->a1,b1,schedule]': the band [a0,b0) at the start moving to [a1,b1) "
                      f"at the end (0 <= a < b <= 100), schedule one of {SCHEDULE_GRAMMAR}")
GRAMMAR = f"{RING_GRAMMAR}; {CURRICULUM_GRAMMAR}"

_ROUND = 9  # decimals kept of a scheduled percentile


@dataclass(frozen=True)
class Schedule:
    """How a bound moves from ``v0`` to ``v1`` over training (module docstring).

    kind:  'constant', 'linear', 'step' or 'exp';
    param: the number of stages (step) or the rate (exp); None otherwise.
    """

    kind: str
    param: float | None = None

    def __post_init__(self):
        if self.kind not in ("constant", "linear", "step", "exp"):
            raise PolicyError(f"unknown schedule {self.kind!r}; allowed: {SCHEDULE_GRAMMAR}")
        if self.kind == "step" and (self.param is None or self.param != int(self.param) or self.param < 2):
            raise PolicyError(f"schedule 'step{self.param}': needs a whole number of stages >= 2; "
                              f"allowed: {SCHEDULE_GRAMMAR}")
        if self.kind == "exp" and (self.param is None or not self.param > 0):
            raise PolicyError(f"schedule 'exp{self.param}': needs a rate > 0; allowed: {SCHEDULE_GRAMMAR}")

    @property
    def name(self) -> str:
        if self.kind == "step":
            return f"step{int(self.param)}"
        if self.kind == "exp":
            return f"exp{_fmt(self.param)}"
        return self.kind

    def fraction(self, progress: float) -> float:
        """``f(p)`` in ``[0, 1]``: the share of the way from ``v0`` to ``v1``."""
        p = min(max(float(progress), 0.0), 1.0)
        if self.kind == "constant":
            return 0.0
        if self.kind == "linear":
            return p
        if self.kind == "step":
            s = int(self.param)
            return min(math.floor(s * p), s - 1) / (s - 1)
        rate = float(self.param)
        return (1.0 - math.exp(-rate * p)) / (1.0 - math.exp(-rate))

    def value(self, v0: float, v1: float, progress: float) -> float:
        """``v(p) = v0 + (v1 - v0) f(p)``, rounded to 1e-9."""
        if v0 == v1:
            return float(v0)
        return round(v0 + (v1 - v0) * self.fraction(progress), _ROUND)


def parse_schedule(text: str) -> Schedule:
    """``'linear'``, ``'step4'``, ``'exp2.5'``, ... -> :class:`Schedule`."""
    t = text.strip()
    if t in ("constant", "linear"):
        return Schedule(t)
    m = re.fullmatch(r"step([0-9]+)?", t)
    if m:
        return Schedule("step", float(m.group(1)) if m.group(1) else 10.0)
    m = re.fullmatch(r"(?:exp|exponential)([0-9]+(?:\.[0-9]+)?)?", t)
    if m:
        return Schedule("exp", float(m.group(1)) if m.group(1) else 5.0)
    raise PolicyError(f"unknown schedule {text!r}; allowed: {SCHEDULE_GRAMMAR}")


class ScheduledBand(NegativePolicy):
    """Keep the band ``[a(p), b(p))`` of each query's candidates.

    ``sim [B, K] -> Selection(index [B, n])`` (or a ``[B, K]`` mask when the
    complement is cheaper), ``n = round(K (b(p) - a(p)) / 100)`` exactly.
    ``style`` ('ring' or 'curriculum') only chooses how the name is written.
    """

    def __init__(self, lo: tuple[float, float], hi: tuple[float, float], schedule: Schedule,
                 style: str = "ring"):
        if style not in ("ring", "curriculum"):
            raise PolicyError(f"style must be 'ring' or 'curriculum', got {style!r}")
        self.lo = (float(lo[0]), float(lo[1]))
        self.hi = (float(hi[0]), float(hi[1]))
        self.style = style
        moving = self.lo[0] != self.lo[1] or self.hi[0] != self.hi[1]
        if not moving:
            schedule = Schedule("constant")
        elif schedule.kind == "constant":
            raise PolicyError(f"policy {self._name(schedule)!r}: a 'constant' schedule keeps the start bounds; "
                              f"allowed: fixed bounds with 'constant', moving bounds with a moving schedule "
                              f"({SCHEDULE_GRAMMAR})")
        self.schedule = schedule
        self.name = self._name(schedule)
        grammar = RING_GRAMMAR if style == "ring" else CURRICULUM_GRAMMAR
        for when, a, b in (("start", self.lo[0], self.hi[0]), ("end", self.lo[1], self.hi[1])):
            if not (0.0 <= a <= 100.0 and 0.0 <= b <= 100.0):
                raise PolicyError(f"policy {self.name!r}: bounds at the {when} of training must lie in [0, 100], "
                                  f"got a={_fmt(a)}, b={_fmt(b)}; allowed: {grammar}")
            if not a < b:
                raise PolicyError(f"policy {self.name!r}: the lower bound is not below the upper bound at the {when} "
                                  f"of training (a={_fmt(a)}, b={_fmt(b)}); allowed: {grammar}")

    def _name(self, schedule: Schedule) -> str:
        def bound(v):
            return _fmt(v[0]) if v[0] == v[1] else f"{_fmt(v[0])}->{_fmt(v[1])}"
        if self.style == "ring":
            return f"ring[{bound(self.lo)}{SEP}{bound(self.hi)}{SEP}{schedule.name}]"
        return (f"curriculum[{_fmt(self.lo[0])}{SEP}{_fmt(self.hi[0])}->{_fmt(self.lo[1])}{SEP}{_fmt(self.hi[1])}"
                f"{SEP}{schedule.name}]")

    def bounds(self, progress: float) -> tuple[float, float]:
        """The band ``(a, b)`` in percentiles at ``progress``."""
        return (self.schedule.value(*self.lo, progress), self.schedule.value(*self.hi, progress))

    def ranks(self, num_candidates: int, progress: float) -> tuple[int, int]:
        """Rank interval ``[lo, hi)`` (0 = easiest) kept at ``progress``."""
        return band_ranks(num_candidates, *self.bounds(progress))

    def __call__(self, sim: Tensor, candidates: Candidates, progress: float = 0.0) -> Selection:
        lo, hi = self.ranks(sim.shape[1], progress)
        index, mask = _rank_window(sim, lo, hi)
        return Selection(keep=mask, index=index)

    def validate(self, num_candidates: int, epochs: int | None = None) -> None:
        # widths are monotone in progress: the ends bound every step
        for when, p in (("start", 0.0), ("end", 1.0)):
            lo, hi = self.ranks(num_candidates, p)
            if hi == lo:
                a, b = self.bounds(p)
                raise PolicyError(
                    f"policy {self.name!r}: the band [{_fmt(a)},{_fmt(b)}) at the {when} of training holds no "
                    f"negative out of {num_candidates} (round({num_candidates} x {_fmt(b - a)} / 100) = 0); "
                    "widen it or use more negatives")


# --------------------------------------------------------------------------
# parsing
# --------------------------------------------------------------------------

_N = r"\s*(-?[0-9]+(?:\.[0-9]+)?)\s*"
_BOUND = rf"{_N}(?:->{_N})?"
_SCHED = r"\s*([a-z]+[0-9.]*)\s*"
_RING_RE = re.compile(rf"^ring\[{_BOUND},{_BOUND}(?:,{_SCHED})?\]$")
_CURRICULUM_RE = re.compile(rf"^curriculum\[{_N},{_N}->{_N},{_N}(?:,{_SCHED})?\]$")


def parse(text: str) -> ScheduledBand | None:
    """``ring[...]`` or ``curriculum[...]`` -> :class:`ScheduledBand`; None when
    ``text`` is neither; :class:`PolicyError` naming the allowed form when it
    is one of them but malformed.

    >>> parse("ring[0 -> 90, 100, linear]").name
    'ring[0->90_100_linear]'
    >>> parse("curriculum[0,100->95,100,step]").name
    'curriculum[0_100->95_100_step10]'
    >>> parse("ring[10,100]").name
    'ring[10_100_constant]'
    """
    m = match_form(text, "ring", _RING_RE, RING_GRAMMAR)
    if m is not None:
        a0, a1, b0, b1, sched = m.groups()
        lo = (float(a0), float(a1 if a1 is not None else a0))
        hi = (float(b0), float(b1 if b1 is not None else b0))
        return ScheduledBand(lo, hi, _schedule(sched, lo, hi, text, RING_GRAMMAR), "ring")
    m = match_form(text, "curriculum", _CURRICULUM_RE, CURRICULUM_GRAMMAR)
    if m is not None:
        a0, b0, a1, b1, sched = m.groups()
        lo, hi = (float(a0), float(a1)), (float(b0), float(b1))
        return ScheduledBand(lo, hi, _schedule(sched, lo, hi, text, CURRICULUM_GRAMMAR), "curriculum")
    return None


def _schedule(text: str | None, lo, hi, policy: str, grammar: str) -> Schedule:
    if text is None:
        if lo[0] != lo[1] or hi[0] != hi[1]:
            raise PolicyError(f"policy {policy!r}: moving bounds need a schedule; allowed: {grammar}")
        return Schedule("constant")
    try:
        return parse_schedule(text)
    except PolicyError as e:
        raise PolicyError(f"policy {policy!r}: {e}") from None
