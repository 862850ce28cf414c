"""Class filters: oracle policies that remove a query's negatives of its own
class, everywhere or within a band of difficulty (Cai et al. 2020,
arXiv:2010.06682, Table 1).  They read labels, so they are not self-supervised."""

from __future__ import annotations

import re

import torch
from torch import Tensor

from .band_names import GRAMMAR
from .bands import Band, check_band, marked, rank_window
from .base import NegativePolicy, Selection
from .candidates import Candidates
from .grammar import PolicyError, fields, numbers

__all__ = ["ClassFilter", "parse"]

#: the form; the bounds are read by the shared number reader (:mod:`.grammar`)
_CLASS_RE = re.compile(r"^drop\[([^\[\]()]*)\)\s*&\s*(same-class|other-class)$")


class ClassFilter(NegativePolicy):
    """Remove a query's negatives of its own class, everywhere or in a band (Cai et al. 2020, arXiv:2010.06682).

    ``drop-same-class``: remove every negative of the query's class;
    ``drop[a,b)&same-class`` / ``drop[a,b)&other-class``: remove only the
    negatives of the band ``[a, b)`` that share (do not share) the query's
    class.  Negatives or queries of unknown class (-1) are never removed.

    Args:
        relation: ``"same-class"`` or ``"other-class"``.
        band: a ``drop`` :class:`Band`, or None (everywhere; same-class only).

    Called with ``sim [B, K]`` and candidates with labels, it answers a ``[B, K]`` mask (an oracle: Table 1).

    >>> c = Candidates(labels=torch.tensor([0, 1, 1]), query_labels=torch.tensor([1]))
    >>> ClassFilter("same-class")(torch.zeros(1, 3), c).keep
    tensor([[ True, False, False]])
    """

    uses_labels = True

    def __init__(self, relation: str, band: Band | None = None):
        if relation not in ("same-class", "other-class"):
            raise PolicyError(f"class relation must be 'same-class' or 'other-class', got {relation!r}")
        if band is None and relation != "same-class":
            raise PolicyError(
                "'drop-other-class' would remove nearly every negative; combine it with a band: 'drop[a,b)&other-class'"
            )
        if band is not None and band.action != "drop":
            raise PolicyError(f"a class relation combines with a drop band, got {band.name!r}")
        self.relation = relation
        self.band = band
        self.name = "drop-same-class" if band is None else f"{band.name}&{relation}"

    def related(self, candidates: Candidates, at: Tensor | None = None) -> Tensor:
        """``[B, K]`` bool (``[B, n]`` at the positions ``at``): the candidate
        is of the query's class (same-class) or of another known one (other-class)."""
        if candidates.labels is None or candidates.query_labels is None:
            raise PolicyError(
                f"policy {self.name!r} needs the class labels of the queries and their negatives, "
                "which this step does not have"
            )
        cand = candidates.labels.clamp(min=-1)
        if candidates.pool_index is not None:
            cand = cand[candidates.pool_index]  # [B, K]
        if at is not None:
            cand = cand[at] if cand.dim() == 1 else cand.gather(1, at)
        q = candidates.query_labels.unsqueeze(1)  # [B, 1]
        # an unknown query label (-1) maps to -2, which no candidate label equals
        same = cand == torch.where(q >= 0, q, -2)
        if self.relation == "same-class":
            return same
        # & with the [B, 1] known-query mask as a uint8 product: a row-broadcast bool & is ~10x slower on CPU
        other = ~same & (cand >= 0)
        return (other.view(torch.uint8) * (q >= 0).view(torch.uint8)).view(torch.bool)

    def __call__(self, sim: Tensor, candidates: Candidates, progress: float = 0.0) -> Selection:
        if self.band is None:
            return Selection(keep=~self.related(candidates).expand_as(sim))
        index, mask = rank_window(sim, *self.band.ranks(sim.shape[1]))
        if index is None:
            return Selection(keep=~(self.related(candidates).expand_as(sim) & mask))
        # a narrow band: the relation is read at its n positions only
        return Selection(keep=marked(sim, index, ~self.related(candidates, index)))

    def validate(self, num_candidates: int, epochs: int | None = None) -> None:
        if self.band is not None:
            Band("keep", self.band.lo_pct, self.band.hi_pct).validate(num_candidates, epochs)

    def eligible(self, candidates: Candidates) -> Tensor:
        # a stand-in must not be what the policy removes for its class
        return ~self.related(candidates)


def parse(text: str) -> ClassFilter | None:
    """Parse the class filters; None for any other form.

    ``drop-same-class`` and ``drop[a,b)&same-class`` / ``drop[a,b)&other-class``
    -> :class:`ClassFilter`; None when ``text`` is none of them (a malformed
    one is then refused by :func:`negatives.policies.band_names.parse`).

    >>> parse("drop[9.99e1_1E2) & same-class").name
    'drop[99.9_100)&same-class'
    """
    t = text.strip()
    if t == "drop-same-class":
        return ClassFilter("same-class")
    m = _CLASS_RE.match(t)
    if m is None:
        return None
    lo, hi = numbers(fields(m.group(1)), text, "band", GRAMMAR, counts=(2,))
    check_band(lo, hi, text)
    return ClassFilter(m.group(2), Band("drop", lo, hi))
