"""Bands of negatives whose bounds move over training: Wu et al.'s Ring and
band curricula.

Both keep, at every step, one window of each query's K candidates ranked by
difficulty (rank 0 the easiest, K - 1 the hardest), re-evaluated at every
step from ``progress``, the fraction of training done; counts are computed
in exact arithmetic (:func:`negatives.ranking.exact`).

Ring (Wu et al. 2020, "Conditional negative sampling", their released
``MoCoRing``).  Sort a query's similarities hardest first; keep
``sorted[inner : outer)`` with::

    outer = floor(K o / 100)          o: the outer ball, percent of K
    inner = floor(outer i / 100)      i: the inner ball, percent of the outer ball

so the ``inner`` hardest negatives are excluded and so is everything beyond
the ``outer`` hardest: ``ring[o,i]``.  In ranks from the easiest that is the
window ``[K - outer, K - inner)``.  ``o`` may move, ``o0->o1``, annealed by a
schedule (their ``thres_outer`` policies); ``i`` is fixed, as in their code
("everyone uses constant inner threshold").  Their shipped MoCo config is
``o = i = 10`` (``ring[10_10]``); their linear annealing starts from the
whole queue, ``ring[100->10_10_linear_50]``, reaching ``o1`` after
``max_anneal_epoch`` = 100 of their 200 epochs (the last field, ``50``: the
percent of training the annealing takes).  ``i = 0`` is their Ball
(``MoCoBall``, the hardest ``outer`` only).

Where ours differs from their code, on purpose: they compute ``int(o K)`` in
binary floating point (``int(0.29 * 100) = 28``), we in exact arithmetic
(29); their ``linspace`` over the ``M`` annealing steps reaches ``o1`` at step
``M - 1``, ours at step ``M`` (``progress`` = until); their sort is a full
``torch.sort``, ours a partial selection (the same set, ties apart); their
``exponential`` schedule decays by ``e^-0.1`` per step, ours is a shape over
the annealing span (below).

Curriculum (Cai et al.'s suggested future work): a percentile band (the
bands' placement rule, :func:`negatives.policies.band_ranks`) whose bounds
move, ``curriculum[a0,b0->a1,b1,schedule]``, e.g.
``curriculum[0,100->95,100,linear]`` goes from ``keep[0,100)`` (all) to
``keep[95,100)`` (the hardest 5%).

Schedules (:class:`Schedule`).  A value moves from ``v0`` (start of training)
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
in the moving value, so checking the two ends (:meth:`ScheduledBand.validate`)
checks every step.  Epoch ``e`` (0-based) starts at ``p = e / epochs``; the
last step runs at ``(T - 1) / T``.

Canonical names (also results folder names: no '/'): numbers in shortest
form (:func:`~negatives.policies.grammar.fmt_number`), a fixed value without an arrow, ``constant`` when nothing
moves, the schedule written with its parameter (``step10``, ``exp5``), and
the span only when it is not 100.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from fractions import Fraction

from torch import Tensor

from ..ranking import exact
from .bands import band_mask, band_ranks
from .base import NegativePolicy, Selection
from .candidates import Candidates
from .grammar import SEP, PolicyError, fields, fmt_number, malformed, match_form, moving, number, numbers

__all__ = [
    "Schedule",
    "ScheduledBand",
    "Ring",
    "Curriculum",
    "parse_schedule",
    "parse",
    "GRAMMAR",
    "RING_GRAMMAR",
    "CURRICULUM_GRAMMAR",
    "SCHEDULE_GRAMMAR",
]

SCHEDULE_GRAMMAR = (
    "'constant', 'linear', 'step' or 'stepS' (S >= 2 stages, default 10), "
    "'exp' or 'expL' (rate L > 0, default 5), optionally followed by ',u': the percent of "
    "training the move takes (0 < u <= 100, default 100)"
)
RING_GRAMMAR = (
    f"'ring[o,i]' or 'ring[o,i,schedule]' (Wu et al.): keep a query's outer ball of the "
    f"floor(K o / 100) hardest negatives without its inner ball, the floor(outer i / 100) hardest; "
    f"o a percent of K in (0, 100], fixed 'x' or moving 'x->y'; i a percent of the outer ball in "
    f"[0, 100) (0: their Ball); schedule one of {SCHEDULE_GRAMMAR}; a band of percentiles that moves "
    f"is a curriculum"
)
CURRICULUM_GRAMMAR = (
    f"'curriculum[a0,b0->a1,b1,schedule]': the band [a0,b0) at the start moving to [a1,b1) "
    f"at the end (0 <= a < b <= 100), schedule one of {SCHEDULE_GRAMMAR}"
)
GRAMMAR = f"{RING_GRAMMAR}; {CURRICULUM_GRAMMAR}"

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


class ScheduledBand(NegativePolicy):
    """A window of each query's ranked candidates that moves with ``progress``.

    ``sim [B, K] -> Selection(keep [B, K])`` with the candidates of ranks :meth:`ranks`.
    Subclasses give ``name``, ``schedule`` and :meth:`ranks`.
    """

    schedule: Schedule

    def ranks(self, num_candidates: int, progress) -> tuple[int, int]:
        """Rank interval ``[lo, hi)`` (0 = easiest) kept at ``progress``."""
        raise NotImplementedError

    def _describe(self, num_candidates: int, progress) -> str:
        """The window at ``progress`` in words, for an error message."""
        raise NotImplementedError

    def __call__(self, sim: Tensor, candidates: Candidates, progress=0.0) -> Selection:
        return Selection(keep=band_mask(sim, *self.ranks(sim.shape[1], progress)))

    def validate(self, num_candidates: int, epochs: int | None = None) -> None:
        # window sizes are monotone in progress: the ends bound every step
        for when, p in (("start", 0), ("end", 1)):
            lo, hi = self.ranks(num_candidates, p)
            if hi == lo:
                raise PolicyError(
                    f"policy {self.name!r}: {self._describe(num_candidates, p)} at the {when} of "
                    f"training holds no negative out of {num_candidates}; widen it or use more "
                    "negatives"
                )


def _moving(v: tuple[float, float]) -> str:
    return fmt_number(v[0]) if v[0] == v[1] else f"{fmt_number(v[0])}->{fmt_number(v[1])}"


def _checked_schedule(schedule: Schedule, moving: bool, name: str, grammar: str) -> Schedule:
    if not moving:
        return Schedule("constant")
    if schedule.kind == "constant":
        raise PolicyError(
            f"policy {name!r}: a 'constant' schedule keeps the start value; allowed: fixed values "
            f"with 'constant', moving ones with a moving schedule; {grammar}"
        )
    return schedule


class Ring(ScheduledBand):
    """Ring: the hardest ``o%`` of the queue without its hardest ``i%`` (Wu et al. 2020, arXiv:2010.02037).

    The outer ball of the ``floor(K o / 100)`` hardest negatives without
    its inner ball, the ``floor(outer i / 100)`` hardest
    (module docstring); ``i = 0`` is their Ball.

    Args:
        outer: ``(o0, o1)`` percent of K at the start and end of the schedule.
        inner: percent of the outer ball, fixed.
        schedule: how ``o`` moves from ``o0`` to ``o1`` (:class:`Schedule`).

    Called with ``sim [B, K]``, it answers a ``[B, K]`` mask of the ranks :meth:`ranks`.

    >>> r = Ring((100, 10), 10, Schedule("linear", until=50))
    >>> r.name, r.ranks(4096, 0), r.ranks(4096, 1)   # all but the hardest 409; then sorted[40:409)
    ('ring[100->10_10_linear_50]', (0, 3687), (3687, 4056))
    """

    def __init__(self, outer: tuple[float, float], inner: float, schedule: Schedule):
        self.outer = (float(outer[0]), float(outer[1]))
        self.inner = float(inner)
        self.schedule = _checked_schedule(schedule, self.outer[0] != self.outer[1], self._name(schedule), RING_GRAMMAR)
        self.name = self._name(self.schedule)
        for when, o in (("start", self.outer[0]), ("end", self.outer[1])):
            if not 0 < o <= 100:
                raise PolicyError(
                    f"policy {self.name!r}: the outer ball at the {when} of training must be a percent "
                    f"of K in (0, 100], got {fmt_number(o)}; allowed: {RING_GRAMMAR}"
                )
        if not 0 <= self.inner < 100:
            raise PolicyError(
                f"policy {self.name!r}: the inner ball must be a percent of the outer ball in [0, 100), "
                f"got {fmt_number(self.inner)}; allowed: {RING_GRAMMAR}"
            )

    def _name(self, schedule: Schedule) -> str:
        fields = [_moving(self.outer), fmt_number(self.inner)]
        if schedule.kind != "constant":
            fields.append(schedule.name)
        return f"ring[{SEP.join(fields)}]"

    def balls(self, num_candidates: int, progress) -> tuple[int, int]:
        """``(outer, inner)``: the sizes of the two balls at ``progress``."""
        outer = math.floor(num_candidates * self.schedule.value(*self.outer, progress) / 100)
        return outer, math.floor(outer * exact(self.inner) / 100)

    def ranks(self, num_candidates: int, progress) -> tuple[int, int]:
        outer, inner = self.balls(num_candidates, progress)
        return num_candidates - outer, num_candidates - inner

    def _describe(self, num_candidates: int, progress) -> str:
        outer, inner = self.balls(num_candidates, progress)
        o = float(self.schedule.value(*self.outer, progress))
        return (
            f"the ring (outer ball floor({num_candidates} x {fmt_number(o)} / 100) = {outer}, inner ball "
            f"floor({outer} x {fmt_number(self.inner)} / 100) = {inner})"
        )


class Curriculum(ScheduledBand):
    """A percentile band whose bounds move over training (Cai et al. 2020, arXiv:2010.06682, future work).

    Keep the percentile band ``[a(p), b(p))`` of each query's candidates,
    ``n = round(K (b(p) - a(p)) / 100)`` of them, placed as the fixed bands.

    Args:
        lo, hi: ``(start, end)`` values of the lower and upper bound.
        schedule: how they move (:class:`Schedule`).

    Called with ``sim [B, K]``, it answers a ``[B, K]`` mask of the ranks :meth:`ranks`.

    >>> c = Curriculum((0, 95), (100, 100), Schedule("linear"))
    >>> c.name, c.ranks(100, 0), c.ranks(100, 1)                # from all to the hardest 5%
    ('curriculum[0_100->95_100_linear]', (0, 100), (95, 100))
    """

    def __init__(self, lo: tuple[float, float], hi: tuple[float, float], schedule: Schedule):
        self.lo = (float(lo[0]), float(lo[1]))
        self.hi = (float(hi[0]), float(hi[1]))
        moving = self.lo[0] != self.lo[1] or self.hi[0] != self.hi[1]
        self.schedule = _checked_schedule(schedule, moving, self._name(schedule), CURRICULUM_GRAMMAR)
        self.name = self._name(self.schedule)
        for when, a, b in (("start", self.lo[0], self.hi[0]), ("end", self.lo[1], self.hi[1])):
            if not (0.0 <= a <= 100.0 and 0.0 <= b <= 100.0):
                raise PolicyError(
                    f"policy {self.name!r}: bounds at the {when} of training must lie in [0, 100], "
                    f"got a={fmt_number(a)}, b={fmt_number(b)}; allowed: {CURRICULUM_GRAMMAR}"
                )
            if not a < b:
                raise PolicyError(
                    f"policy {self.name!r}: the lower bound is not below the upper bound at the {when} "
                    f"of training (a={fmt_number(a)}, b={fmt_number(b)}); allowed: {CURRICULUM_GRAMMAR}"
                )

    def _name(self, schedule: Schedule) -> str:
        return (
            f"curriculum[{fmt_number(self.lo[0])}{SEP}{fmt_number(self.hi[0])}->{fmt_number(self.lo[1])}{SEP}{fmt_number(self.hi[1])}"
            f"{SEP}{schedule.name}]"
        )

    def bounds(self, progress) -> tuple[Fraction, Fraction]:
        """The band ``(a, b)`` in percentiles at ``progress``, exact."""
        return self.schedule.value(*self.lo, progress), self.schedule.value(*self.hi, progress)

    def ranks(self, num_candidates: int, progress) -> tuple[int, int]:
        return band_ranks(num_candidates, *self.bounds(progress))

    def _describe(self, num_candidates: int, progress) -> str:
        a, b = (float(v) for v in self.bounds(progress))
        return f"the band [{fmt_number(a)},{fmt_number(b)}) (round({num_candidates} x {fmt_number(b - a)} / 100) = 0)"


# --------------------------------------------------------------------------
# parsing
# --------------------------------------------------------------------------

#: the forms; the numbers are read by the shared number reader (:mod:`.grammar`)
_RING_RE = re.compile(r"^ring\[([^\[\]]*)\]$")
_CURRICULUM_RE = re.compile(r"^curriculum\[([^\[\]]*)\]$")


def parse(text: str) -> ScheduledBand | None:
    """Parse ``ring[...]`` and ``curriculum[...]``; None for any other form.

    ``ring[...]`` or ``curriculum[...]`` -> :class:`Ring` / :class:`Curriculum`;
    None when ``text`` is neither; :class:`PolicyError` naming the allowed
    form when it is one of them but malformed.

    >>> parse("ring[100 -> 10, 10, linear, 50]").name
    'ring[100->10_10_linear_50]'
    >>> parse("ring[10,10]").name
    'ring[10_10]'
    >>> parse("curriculum[0,100->95,100,step]").name
    'curriculum[0_100->95_100_step10]'
    """
    m = match_form(text, "ring", _RING_RE, RING_GRAMMAR)
    if m is not None:
        items, form = fields(m.group(1)), "ring policy"
        if not 2 <= len(items) <= 4:
            raise malformed(text, form, RING_GRAMMAR, f"{len(items)} field{'s' * (len(items) != 1)}, not 2 to 4")
        outer, (inner,) = moving(items[0], text, form, RING_GRAMMAR), numbers(items[1:2], text, form, RING_GRAMMAR)
        return Ring(outer, inner, _schedule(items[2:], outer[0] != outer[1], text, form, RING_GRAMMAR))
    m = match_form(text, "curriculum", _CURRICULUM_RE, CURRICULUM_GRAMMAR)
    if m is not None:
        (start, arrow, end), form = m.group(1).partition("->"), "curriculum policy"
        items = fields(end)
        if not arrow or not 2 <= len(items) <= 4:
            why = f"{len(items)} fields after '->', not 2 to 4" if arrow else "no '->'"
            raise malformed(text, form, CURRICULUM_GRAMMAR, why)
        a0, b0 = numbers(fields(start), text, form, CURRICULUM_GRAMMAR, counts=(2,))
        a1, b1 = numbers(items[:2], text, form, CURRICULUM_GRAMMAR)
        schedule = _schedule(items[2:], (a0, b0) != (a1, b1), text, form, CURRICULUM_GRAMMAR)
        return Curriculum((a0, a1), (b0, b1), schedule)
    return None


def _schedule(items: list[str], moves: bool, policy: str, form: str, grammar: str) -> Schedule:
    """The schedule of a ring or curriculum from its fields after the values: ``[]``,
    ``[name]`` or ``[name, until]``."""
    if not items:
        if moves:
            raise PolicyError(f"policy {policy!r}: moving bounds need a schedule; allowed: {grammar}")
        return Schedule("constant")
    until = None
    if len(items) == 2:
        (until,) = numbers(items[1:], policy, form, grammar)
    try:
        return parse_schedule(items[0], until)
    except PolicyError as e:
        raise PolicyError(f"policy {policy!r}: {e}") from None
