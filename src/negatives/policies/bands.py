"""Bands of difficulty: the policies of Cai et al. 2020 (arXiv:2010.06682).

``keep[a,b)`` keeps only the negatives whose difficulty percentile lies in
``[a, b)`` (Figure 2), ``drop[a,b)`` removes that band (Figure 3).
Percentiles and the exact count of a band: :func:`band_ranks` and the
package docstring of :mod:`negatives.policies`.  Their names are read by
:mod:`.band_names`; the class filters of Table 1 are in :mod:`.classes`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..ranking import exact, percent_of, top_k
from .base import NegativePolicy, Selection
from .candidates import Candidates
from .grammar import SEP, PolicyError, fmt_number

__all__ = ["Band", "band_ranks", "band_selection", "rank_window", "marked", "check_band"]


def check_band(lo: float, hi: float, text: str) -> None:
    """Raise :class:`PolicyError` unless ``0 <= lo < hi <= 100``."""
    if not (0.0 <= lo <= 100.0 and 0.0 <= hi <= 100.0):
        raise PolicyError(f"policy {text!r}: band bounds must lie in [0, 100], got a={lo}, b={hi}")
    if not lo < hi:
        raise PolicyError(f"policy {text!r}: band needs a < b, got a={lo}, b={hi}")


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
    a, width = exact(lo_pct), exact(hi_pct) - exact(lo_pct)
    n = percent_of(k, width)
    lo = min(percent_of(k, a), k - n)
    return lo, lo + n


def rank_window(sim: Tensor, lo: int, hi: int) -> tuple[Tensor | None, Tensor | None]:
    """The candidates of ranks ``[lo, hi)`` of every row, as positions or as a mask.

    The ranks ``[lo, hi)`` of every row of ``sim``, as ``(index [B, hi-lo], None)``
    or, for a band inside the queue whose complement is smaller (or that is every rank), ``(None, mask [B, K])``.

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
    if hi - lo == k:  # every rank: no selection to make (as positions, a whole top_k in another order)
        return None, torch.ones((b, k), dtype=torch.bool, device=sim.device)
    from_top, from_bottom, outside = k - lo, hi, (k - hi) + lo
    # the complement only for a band inside the queue (two selections either
    # way): a band that reaches an end is one selection as an index
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


def band_selection(sim: Tensor, lo: int, hi: int) -> Selection:
    """The candidates of ranks ``[lo, hi)`` of every row (:func:`rank_window`): their mask, and their positions."""
    index, mask = rank_window(sim, lo, hi)
    return Selection(keep=mask) if index is None else Selection(keep=marked(sim, index, True), at=index)


def marked(sim: Tensor, index: Tensor, value) -> Tensor:
    """A ``[B, K]`` mask like ``sim``: ``value`` (a bool, or ``[B, n]`` bools) at ``index [B, n]``, else its opposite (True)."""
    fill = not value if isinstance(value, bool) else True
    return torch.full(sim.shape, fill, dtype=torch.bool, device=sim.device).scatter_(1, index, value)


class Band(NegativePolicy):
    """Keep or remove a band of difficulty percentiles (Cai et al. 2020, arXiv:2010.06682).

    Args:
        action: ``"keep"`` (``keep[a,b)``) or ``"drop"`` (``drop[a,b)``).
        lo_pct, hi_pct: the band ``[a, b)``, ``0 <= a < b <= 100``.

    Called with ``sim [B, K]``, it answers a ``[B, K]`` mask: for ``keep``
    exactly ``round(K (b - a) / 100)`` True per row, for ``drop`` exactly
    ``K`` minus that (:func:`band_ranks`).

    >>> Band("keep", 50, 100)(torch.tensor([[0.1, 0.9, 0.5, 0.7]]), None).keep    # the hardest half
    tensor([[False,  True, False,  True]])
    """

    def __init__(self, action: str, lo_pct: float, hi_pct: float):
        if action not in ("keep", "drop"):
            raise PolicyError(f"band action must be 'keep' or 'drop', got {action!r}")
        check_band(lo_pct, hi_pct, f"{action}[{lo_pct},{hi_pct})")
        self.action, self.lo_pct, self.hi_pct = action, float(lo_pct), float(hi_pct)
        self.name = f"{action}[{fmt_number(lo_pct)}{SEP}{fmt_number(hi_pct)})"

    def ranks(self, num_candidates: int) -> tuple[int, int]:
        """The band's rank interval ``[lo, hi)`` among ``num_candidates`` (0 = easiest)."""
        return band_ranks(num_candidates, self.lo_pct, self.hi_pct)

    def __call__(self, sim: Tensor, candidates: Candidates, progress: float = 0.0) -> Selection:
        k = sim.shape[1]
        lo, hi = self.ranks(k)
        if self.action == "keep" and lo == 0 and 0 < k - hi < hi:
            # the easiest hi: cheapest as the K - hi hardest removed
            return Selection(keep=marked(sim, top_k(sim, k - hi), False))
        band = band_selection(sim, lo, hi)  # [B, K], and [B, n] as positions
        return band if self.action == "keep" else Selection(keep=~band.keep)

    def validate(self, num_candidates: int, epochs: int | None = None) -> None:
        lo, hi = self.ranks(num_candidates)
        if hi == lo:
            raise PolicyError(
                f"policy {self.name!r}: the band holds no negative out of {num_candidates} "
                f"(round({num_candidates} x {self.hi_pct - self.lo_pct:g} / 100) = 0); widen it or use more negatives"
            )
        if self.action == "drop" and hi - lo == num_candidates:
            raise PolicyError(f"policy {self.name!r} removes every one of the {num_candidates} negatives")
