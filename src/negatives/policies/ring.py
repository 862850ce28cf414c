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
the annealing span (:mod:`negatives.policies.schedules`).

Curriculum (Cai et al.'s suggested future work): a percentile band (the
bands' placement rule, :func:`negatives.policies.band_ranks`) whose bounds
move, ``curriculum[a0,b0->a1,b1,schedule]``, e.g.
``curriculum[0,100->95,100,linear]`` goes from ``keep[0,100)`` (all) to
``keep[95,100)`` (the hardest 5%).

Both move by a schedule (:class:`~negatives.policies.schedules.Schedule`:
``constant``, ``linear``, ``stepS``, ``expL``, over the first ``u``% of
training).  Every schedule is monotone and so is every window's size in the
moving value, so checking the two ends (:meth:`ScheduledBand.validate`)
checks every step.

Canonical names (also results folder names: no '/'): numbers in shortest
form (:func:`~negatives.policies.grammar.fmt_number`), a fixed value without an arrow, ``constant`` when nothing
moves, the schedule written with its parameter (``step10``, ``exp5``), and
the span only when it is not 100.
"""

from __future__ import annotations

import math
import re
from fractions import Fraction

from torch import Tensor

from ..ranking import exact
from .bands import band_ranks, band_selection
from .base import NegativePolicy, Selection
from .candidates import Candidates
from .grammar import SEP, PolicyError, fields, fmt_number, malformed, match_form, moving, numbers
from .schedules import SCHEDULE_GRAMMAR, Schedule, parse_schedule

__all__ = [
    "ScheduledBand",
    "Ring",
    "Curriculum",
    "parse",
    "GRAMMAR",
    "RING_GRAMMAR",
    "CURRICULUM_GRAMMAR",
]

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
        return band_selection(sim, *self.ranks(sim.shape[1], progress))

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
