"""Bands of difficulty and class filters: the policies of the paper.

``keep[a,b)`` keeps only the negatives whose difficulty percentile lies in
``[a, b)`` (Figure 2), ``drop[a,b)`` removes that band (Figure 3), and the
class filters remove a query's negatives of its own class, everywhere
(``drop-same-class``) or within a band (``drop[a,b)&same-class``,
``drop[a,b)&other-class``; Table 1).  Percentiles and the exact count of a
band: :func:`band_ranks` and the package docstring of :mod:`negatives.policies`.
"""

from __future__ import annotations

import functools
import re
from fractions import Fraction

import numpy as np
import torch
from torch import Tensor

from .base import NegativePolicy
from .candidates import Candidates
from .encodings import Swap
from .grammar import SEP, PolicyError, exact, fields, fmt_number, malformed, numbers
from .selection import Selection

__all__ = ["Band", "ClassFilter", "band_ranks", "top_k", "rank_window", "check_band", "parse", "GRAMMAR"]

GRAMMAR = ("'keep[a,b)' or 'drop[a,b)' with 0 <= a < b <= 100 (percentiles of difficulty), "
           "'drop-same-class', 'drop[a,b)&same-class', 'drop[a,b)&other-class'")

#: the forms; the bounds are read by the shared number reader (:mod:`.grammar`)
_BAND_RE = re.compile(r"^(keep|drop)\[([^\[\]()]*)\)$")
_CLASS_RE = re.compile(r"^drop\[([^\[\]()]*)\)\s*&\s*(same-class|other-class)$")

def check_band(lo: float, hi: float, text: str) -> None:
    """Raise :class:`PolicyError` unless ``0 <= lo < hi <= 100``."""
    if not (0.0 <= lo <= 100.0 and 0.0 <= hi <= 100.0):
        raise PolicyError(f"policy {text!r}: band bounds must lie in [0, 100], got a={lo}, b={hi}")
    if not lo < hi:
        raise PolicyError(f"policy {text!r}: band needs a < b, got a={lo}, b={hi}")


def _percent_of(k: int, pct: Fraction) -> int:
    """``round(k pct / 100)``, half up, in integers."""
    return (2 * k * pct.numerator + 100 * pct.denominator) // (200 * pct.denominator)


@functools.lru_cache(maxsize=4096)
def _band(lo_pct, hi_pct) -> tuple[Fraction, Fraction]:
    """``(a, b - a)`` exact (cached: a band's bounds are the same every step)."""
    a = exact(lo_pct)
    return a, exact(hi_pct) - a


def band_ranks(num_candidates: int, lo_pct, hi_pct) -> tuple[int, int]:
    """Rank interval ``[lo, hi)`` (0 = easiest) of the band ``[lo_pct, hi_pct)``.

    ``hi - lo == round(K (hi_pct - lo_pct) / 100)`` exactly, half up, in
    exact arithmetic on the percentiles as written (:func:`exact`: with
    binary floats ``100 - 99.9`` is ``0.0999...943``, and a count ending in
    .5 would lose one); see the module docstring for the placement rule.

    >>> band_ranks(4096, 99.9, 100)          # 4.096 -> 4
    (4092, 4096)
    >>> band_ranks(5, 99.9, 100), band_ranks(1000, 0, 99.95)   # 0.005 -> 0; 999.5 -> 1000
    ((5, 5), (0, 1000))
    """
    k = num_candidates
    a, width = _band(lo_pct, hi_pct)
    n = _percent_of(k, width)
    lo = min(_percent_of(k, a), k - n)
    return lo, lo + n


def top_k(x: Tensor, k: int, largest: bool = True) -> Tensor:
    """Positions of the ``k`` largest (or smallest) entries of every row, in no order.

    Positions of the ``k`` largest (``largest=False``: smallest) entries of
    every row, in no particular order: ``x [B, K] -> [B, k]`` int64, exactly
    ``k`` per row whatever the ties (an unsorted ``topk``).

    On CPU (float32/64, no gradient) this is numpy's ``argpartition``, an
    introselect that numpy runs with SIMD (AVX-512 / AVX2), cheaper there
    than ``torch.topk`` (``benchmarks/band_overhead.py``, figures in
    benchmarks/RESULTS.md) -- except for the few largest (``k <= 4``: the
    hardest 0.1% of 4096), where ``torch.topk`` is the cheaper one.
    Elsewhere (GPU, ``meta``, bf16) it is :func:`torch.topk`,
    which is fast on a GPU and never syncs.  The two may break ties
    differently, never the count.
    """
    n = x.shape[1]
    if (x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64) and 0 < k < n
            and not (largest and k <= 4)):
        kth = n - k if largest else k - 1
        part = np.argpartition(x.detach().numpy(), kth, axis=1)
        pick = part[:, n - k:] if largest else part[:, :k]
        return torch.from_numpy(np.ascontiguousarray(pick, dtype=np.int64))
    return torch.topk(x, k, dim=1, largest=largest, sorted=False).indices


def rank_window(sim: Tensor, lo: int, hi: int) -> tuple[Tensor | None, Tensor | None]:
    """The candidates of ranks ``[lo, hi)`` of every row, as positions or as a mask.

    The ranks ``[lo, hi)`` of every row of ``sim``, as ``(index [B, hi-lo], None)``
    or, for a band inside the queue whose complement is smaller, ``(None, mask [B, K])``.

    Never a sort: partial selections (:func:`top_k`) of whichever is
    smallest -- the band counted from the hardest end (the ``K - lo``
    hardest, of which the band is the ``hi - lo`` easiest), from the easiest
    end (the ``hi`` easiest, of which the band is the ``hi - lo`` hardest),
    or the band's complement, the ``K - hi`` hardest plus the ``lo``
    easiest.  Counts stay exact under ties: each second selection picks
    among what the first one took (or, for the complement, among what it
    left).
    """
    b, k = sim.shape
    if hi <= lo:
        return sim.new_zeros((b, 0), dtype=torch.long), None
    from_top, from_bottom, outside = k - lo, hi, (k - hi) + lo
    # the complement only for a band inside the queue (two selections either
    # way): a band that reaches an end is one selection as an index, and the
    # loss then gathers it instead of masking [B, K]
    if 0 < lo and hi < k and outside < min(from_top, from_bottom):
        mask = torch.ones((b, k), dtype=torch.bool, device=sim.device)
        if k - hi:
            mask.scatter_(1, top_k(sim, k - hi), False)
        if lo:
            rest = sim if hi == k else sim.masked_fill(~mask, float("inf"))  # the hardest already taken out
            mask.scatter_(1, top_k(rest, lo, largest=False), False)
        return None, mask
    if from_top <= from_bottom:
        # the (K - lo) hardest; when the band stops short of the hardest, it is
        # the (hi - lo) easiest of them (a second, small selection: no sort)
        idx = top_k(sim, from_top)
        if hi == k:
            return idx, None
        inner = top_k(sim.gather(1, idx), hi - lo, largest=False)
        return idx.gather(1, inner), None
    # the hi easiest; when the band starts above the easiest, the (hi - lo) hardest of them
    idx = top_k(sim, from_bottom, largest=False)
    if lo == 0:
        return idx, None
    inner = top_k(sim.gather(1, idx), hi - lo, largest=True)
    return idx.gather(1, inner), None


class Band(NegativePolicy):
    """Keep (``keep[a,b)``) or remove (``drop[a,b)``) a difficulty band.

    ``sim [B, K] -> keep [B, K]``: for ``keep`` exactly ``round(K w/100)``
    True per row, for ``drop`` exactly ``K - round(K w/100)``.
    """

    def __init__(self, action: str, lo_pct: float, hi_pct: float):
        if action not in ("keep", "drop"):
            raise PolicyError(f"band action must be 'keep' or 'drop', got {action!r}")
        check_band(lo_pct, hi_pct, f"{action}[{lo_pct},{hi_pct})")
        self.action = action
        self.lo_pct = float(lo_pct)
        self.hi_pct = float(hi_pct)
        self.name = f"{action}[{fmt_number(lo_pct)}{SEP}{fmt_number(hi_pct)})"

    def ranks(self, num_candidates: int) -> tuple[int, int]:
        return band_ranks(num_candidates, self.lo_pct, self.hi_pct)

    def __call__(self, sim: Tensor, candidates: Candidates, progress: float = 0.0) -> Selection:
        lo, hi = self.ranks(sim.shape[1])
        k = sim.shape[1]
        if self.action == "keep":
            if lo == 0 and 0 < k - hi < hi:
                # the easiest hi: cheapest as the K - hi hardest removed
                drop = top_k(sim, k - hi)
                return Selection.without(drop)
            index, mask = rank_window(sim, lo, hi)
            return Selection.where(mask) if index is None else Selection.at(index)
        index, mask = rank_window(sim, lo, hi)
        if index is not None and index.shape[1] < k:
            return Selection.without(index)      # the band's positions are the removed ones
        return Selection.where(~(mask if index is None else Selection.at(index).mask(sim.shape)))

    def validate(self, num_candidates: int, epochs: int | None = None) -> None:
        lo, hi = self.ranks(num_candidates)
        if hi == lo:
            raise PolicyError(
                f"policy {self.name!r}: the band holds no negative out of {num_candidates} "
                f"(round({num_candidates} x {self.hi_pct - self.lo_pct:g} / 100) = 0); widen it or use more negatives")
        if self.action == "drop" and hi - lo == num_candidates:
            raise PolicyError(f"policy {self.name!r} removes every one of the {num_candidates} negatives")


class ClassFilter(NegativePolicy):
    """Oracle policies that read labels (Table 1).

    ``drop-same-class``: remove every negative of the query's class;
    ``drop[a,b)&same-class`` / ``drop[a,b)&other-class``: remove only the
    negatives of the band ``[a, b)`` that share (do not share) the query's
    class.  Negatives or queries of unknown class (-1) are never removed.

    ``sim [B, K] -> keep [B, K]``.
    """

    uses_labels = True

    def __init__(self, relation: str, band: Band | None = None):
        if relation not in ("same-class", "other-class"):
            raise PolicyError(f"class relation must be 'same-class' or 'other-class', got {relation!r}")
        if band is None and relation != "same-class":
            raise PolicyError("'drop-other-class' would remove nearly every negative; combine it with a band: "
                              "'drop[a,b)&other-class'")
        if band is not None and band.action != "drop":
            raise PolicyError(f"a class relation combines with a drop band, got {band.name!r}")
        self.relation = relation
        self.band = band
        self.name = "drop-same-class" if band is None else f"{band.name}&{relation}"

    def _related(self, candidates: Candidates, at: Tensor | None = None) -> Tensor:
        return candidates.same_class(at) if self.relation == "same-class" else candidates.other_class(at)

    def __call__(self, sim: Tensor, candidates: Candidates, progress: float = 0.0) -> Selection:
        if self.band is None:
            return Selection.where(~self._related(candidates).expand_as(sim))
        index, mask = rank_window(sim, *self.band.ranks(sim.shape[1]))
        if index is None:
            return Selection.where(~(self._related(candidates).expand_as(sim) & mask))
        # a narrow band: the relation is read at its n positions only, and
        # the related ones are swapped for nothing (no [B, K] comparison or mask)
        return Selection.exchanging(Swap(at=index, to=index, valid=~self._related(candidates, index)))

    def validate(self, num_candidates: int, epochs: int | None = None) -> None:
        if self.band is not None:
            Band("keep", self.band.lo_pct, self.band.hi_pct).validate(num_candidates, epochs)

    def eligible(self, candidates: Candidates) -> Tensor:
        # a stand-in must not be what the policy removes for its class
        return ~self._related(candidates)


def parse(text: str) -> NegativePolicy | None:
    """Parse the paper's bands and class filters; None for any other form.

    ``keep[a,b)``, ``drop[a,b)``, ``drop-same-class`` and
    ``drop[a,b)&same-class`` / ``&other-class`` -> policy; None when ``text``
    is none of them; :class:`PolicyError` when it is a band but malformed
    (bounds out of range: the range named).

    >>> parse("keep[95,100)").name
    'keep[95_100)'
    >>> parse("drop[9.99e1_1E2) & same-class").name
    'drop[99.9_100)&same-class'
    """
    t = text.strip()
    if t == "drop-same-class":
        return ClassFilter("same-class")
    m = _BAND_RE.match(t)
    c = None if m else _CLASS_RE.match(t)
    if not (m or c):
        if re.match(r"^(keep|drop)\[", t):
            raise malformed(text, "band", GRAMMAR)
        return None
    lo, hi = numbers(fields(m.group(2) if m else c.group(1)), text, "band", GRAMMAR, counts=(2,))
    check_band(lo, hi, text)
    return Band(m.group(1), lo, hi) if m else ClassFilter(c.group(2), Band("drop", lo, hi))
