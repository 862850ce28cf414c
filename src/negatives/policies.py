"""Negative policies: which of a query's candidate negatives the loss sees.

Every policy is a small object with one interface::

    selection = policy(sim, candidates, progress)

* ``sim``        -- ``[B, K]`` cosine similarity of each query to each candidate
                    negative (the *difficulty* of EXPERIMENTS.md section 2).
* ``candidates`` -- :class:`Candidates`, what is known about the K negatives
                    (labels, dataset indices, ages); policies that do not need
                    it ignore it.
* ``progress``   -- fraction of training done, in ``[0, 1]`` (for annealed
                    policies; the band policies ignore it).

and returns a :class:`Selection`: a ``[B, K]`` boolean ``keep`` mask (``None``
means every negative is kept).  The method turns the selection into the loss;
the trainer never knows which policy it runs.

A policy is named by a short string that is parsed and validated in one place,
:func:`parse_policy`, and is also its results folder name:

=====================  ====================================================
``all``                every negative (the baseline)
``keep[a,b)``          only the negatives whose difficulty percentile is in
                       ``[a, b)`` (Figure 2)
``drop[a,b)``          every negative except that band (Figure 3)
=====================  ====================================================

Percentiles (EXPERIMENTS.md section 2).  For one query the K candidates are
ranked by difficulty, rank ``r = 0`` the easiest and ``r = K - 1`` the hardest;
the percentile of rank ``r`` is ``100 r / K``.  A band ``[a, b)`` of width
``w = b - a`` holds exactly ``n = round(K w / 100)`` negatives (half rounds
up): the ranks ``lo .. lo + n - 1`` with ``lo = round(K a / 100)``, moved down
where needed so the band ends at rank ``K`` at the latest.  When ``K a / 100``
and ``K b / 100`` are whole numbers these are exactly the ranks with
``a <= p < b``; otherwise the band differs from that set by at most one
negative at an edge, which is the price of the exact count.  A band touching
100 always holds the hardest ``n``; one touching 0 the easiest ``n``.
Ties are broken by :func:`torch.topk`'s order, which is deterministic for a
given device and input.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = [
    "Candidates",
    "Selection",
    "NegativePolicy",
    "All",
    "Band",
    "PolicyError",
    "parse_policy",
    "band_ranks",
]


class PolicyError(ValueError):
    """A policy string that cannot be parsed or makes no sense."""


@dataclass(frozen=True)
class Candidates:
    """What is known about the K candidate negatives of a step.

    labels:  ``[K]`` int64 class label of each negative (-1 when unknown).
    indices: ``[K]`` int64 dataset index of each negative (-1 when unknown).
    """

    labels: Tensor | None = None
    indices: Tensor | None = None


@dataclass(frozen=True)
class Selection:
    """What the loss needs from a policy: at most one of

    keep:  ``[B, K]`` bool, True for a negative the query's loss sees;
    index: ``[B, n]`` int64, the positions of the n negatives each query
           sees (policies that keep the same count for every query: the loss
           then works on ``[B, n]`` instead of ``[B, K]``);
    drop_index: ``[B, r]`` int64, distinct positions of the r negatives each
           query does *not* see, all others kept (for selections that remove a
           few: the loss zeroes r terms instead of masking ``[B, K]``).

    None of them: every negative is kept.
    """

    keep: Tensor | None = None
    index: Tensor | None = None
    drop_index: Tensor | None = None

    def mask(self, shape: tuple[int, int], device=None) -> Tensor | None:
        """The selection as a ``[B, K]`` bool mask (None: all kept)."""
        if self.index is not None:
            m = torch.zeros(shape, dtype=torch.bool, device=self.index.device)
            return m.scatter_(1, self.index, True)
        if self.drop_index is not None:
            m = torch.ones(shape, dtype=torch.bool, device=self.drop_index.device)
            return m.scatter_(1, self.drop_index, False)
        return self.keep

    def kept_per_query(self, num_candidates: int) -> float:
        if self.index is not None:
            return float(self.index.shape[1])
        if self.drop_index is not None:
            return float(num_candidates - self.drop_index.shape[1])
        if self.keep is not None:
            return float(self.keep.sum(1).float().mean())
        return float(num_candidates)


class NegativePolicy:
    """Base class: keep every negative."""

    #: the policy's canonical string (its results folder name)
    name: str = "all"
    #: True when the policy reads class labels (an oracle, not self-supervised)
    uses_labels: bool = False

    def __call__(self, sim: Tensor, candidates: Candidates, progress: float = 0.0) -> Selection:
        return Selection(keep=None)

    def __repr__(self) -> str:  # pragma: no cover - cosmetic
        return f"{type(self).__name__}({self.name!r})"


class All(NegativePolicy):
    """The baseline: every candidate negative is used."""

    name = "all"


def _round_half_up(x: float) -> int:
    return int(math.floor(x + 0.5))


def band_ranks(num_candidates: int, lo_pct: float, hi_pct: float) -> tuple[int, int]:
    """Rank interval ``[lo, hi)`` (0 = easiest) of the band ``[lo_pct, hi_pct)``.

    ``hi - lo == round(K * (hi_pct - lo_pct) / 100)`` exactly; see the module
    docstring for the placement rule.
    """
    k = num_candidates
    n = _round_half_up(k * (hi_pct - lo_pct) / 100.0)
    lo = min(_round_half_up(k * lo_pct / 100.0), k - n)
    return lo, lo + n


def _rank_window(sim: Tensor, lo: int, hi: int) -> tuple[Tensor | None, Tensor | None]:
    """The ranks ``[lo, hi)`` of every row of ``sim``, as ``(index [B, hi-lo], None)``
    or, when the complement is cheaper to find, ``(None, mask [B, K])``.

    Never a full double argsort: partial selections (``topk``) of whichever
    is smallest -- the band counted from the hardest end (``K - lo``
    elements), from the easiest end (``hi``), or the band's complement, the
    ``K - hi`` hardest plus the ``lo`` easiest.  Counts stay exact under ties:
    the complement's second selection cannot pick what the first one took.
    """
    b, k = sim.shape
    if hi <= lo:
        return sim.new_zeros((b, 0), dtype=torch.long), None
    from_top, from_bottom, outside = k - lo, hi, (k - hi) + lo
    if outside < min(from_top, from_bottom):
        mask = torch.ones((b, k), dtype=torch.bool, device=sim.device)
        if k - hi:
            mask.scatter_(1, torch.topk(sim, k - hi, dim=1, largest=True, sorted=False).indices, False)
        if lo:
            rest = sim.masked_fill(~mask, float("inf"))
            mask.scatter_(1, torch.topk(rest, lo, dim=1, largest=False, sorted=False).indices, False)
        return None, mask
    if from_top <= from_bottom:
        # the (K - lo) hardest, hardest first; the first (K - hi) are above the
        # band (no order needed when the band reaches the hardest)
        idx = torch.topk(sim, from_top, dim=1, largest=True, sorted=hi < k).indices
        return idx[:, k - hi :], None
    # the hi easiest, easiest first; the first lo are below the band
    idx = torch.topk(sim, from_bottom, dim=1, largest=False, sorted=lo > 0).indices
    return idx[:, lo:], None


def _rank_window_mask(sim: Tensor, lo: int, hi: int) -> Tensor:
    """``[B, K]`` bool mask of the ranks ``[lo, hi)`` of every row of ``sim``."""
    index, mask = _rank_window(sim, lo, hi)
    return mask if index is None else Selection(index=index).mask(sim.shape)


class Band(NegativePolicy):
    """Keep (``keep[a,b)``) or remove (``drop[a,b)``) a difficulty band.

    ``sim [B, K] -> keep [B, K]``: for ``keep`` exactly ``round(K w/100)``
    True per row, for ``drop`` exactly ``K - round(K w/100)``.
    """

    def __init__(self, action: str, lo_pct: float, hi_pct: float):
        if action not in ("keep", "drop"):
            raise PolicyError(f"band action must be 'keep' or 'drop', got {action!r}")
        _check_band(lo_pct, hi_pct, f"{action}[{lo_pct},{hi_pct})")
        self.action = action
        self.lo_pct = float(lo_pct)
        self.hi_pct = float(hi_pct)
        self.name = f"{action}[{_fmt(lo_pct)},{_fmt(hi_pct)})"

    def ranks(self, num_candidates: int) -> tuple[int, int]:
        return band_ranks(num_candidates, self.lo_pct, self.hi_pct)

    def __call__(self, sim: Tensor, candidates: Candidates, progress: float = 0.0) -> Selection:
        lo, hi = self.ranks(sim.shape[1])
        k = sim.shape[1]
        if self.action == "keep":
            if lo == 0 and 0 < k - hi < hi:
                # the easiest hi: cheapest as the K - hi hardest removed
                drop = torch.topk(sim, k - hi, dim=1, largest=True, sorted=False).indices
                return Selection(drop_index=drop)
            index, mask = _rank_window(sim, lo, hi)
            return Selection(keep=mask, index=index)
        index, mask = _rank_window(sim, lo, hi)
        if index is not None and index.shape[1] < k:
            return Selection(drop_index=index)      # the band's positions are the removed ones
        return Selection(keep=~(mask if index is None else Selection(index=index).mask(sim.shape)))


# --------------------------------------------------------------------------
# parsing: the one place where a policy string is read and validated
# --------------------------------------------------------------------------

_NUM = r"[0-9]+(?:\.[0-9]+)?"
_BAND_RE = re.compile(rf"^(keep|drop)\[\s*({_NUM})\s*,\s*({_NUM})\s*\)$")

POLICY_GRAMMAR = "'all', 'keep[a,b)' or 'drop[a,b)' with 0 <= a < b <= 100 (percentiles of difficulty)"


def _fmt(x: float) -> str:
    """Shortest decimal form: 95.0 -> '95', 99.9 -> '99.9'."""
    return f"{float(x):g}"


def _check_band(lo: float, hi: float, text: str) -> None:
    if not (0.0 <= lo <= 100.0 and 0.0 <= hi <= 100.0):
        raise PolicyError(f"policy {text!r}: band bounds must lie in [0, 100], got a={lo}, b={hi}")
    if not lo < hi:
        raise PolicyError(f"policy {text!r}: band needs a < b, got a={lo}, b={hi}")


def parse_policy(text: str) -> NegativePolicy:
    """Parse a policy string into a policy object.

    >>> parse_policy("keep[95,100)").name
    'keep[95,100)'
    >>> parse_policy("drop[99.9, 100)").name
    'drop[99.9,100)'

    Raises :class:`PolicyError` naming the allowed forms on anything else.
    """
    if not isinstance(text, str):
        raise PolicyError(f"policy must be a string, got {text!r}; allowed: {POLICY_GRAMMAR}")
    t = text.strip()
    if t == "all":
        return All()
    m = _BAND_RE.match(t)
    if m:
        return Band(m.group(1), float(m.group(2)), float(m.group(3)))
    if re.match(r"^(keep|drop)\[", t):
        # recognisably a band with bad bounds: say which part is wrong
        nums = re.findall(r"-?[0-9]+(?:\.[0-9]+)?", t)
        if len(nums) == 2 and t.endswith(")"):
            _check_band(float(nums[0]), float(nums[1]), t)
        raise PolicyError(f"policy {text!r}: malformed band; allowed: {POLICY_GRAMMAR}")
    raise PolicyError(f"unknown policy {text!r}; allowed: {POLICY_GRAMMAR}")
