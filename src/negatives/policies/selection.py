"""A policy's answer for one step: which candidates count for each query, plus
any synthetic negatives.

A :class:`Selection` means one thing, :meth:`Selection.mask` (``[B, K]`` bool,
True: the candidate is one of the query's negatives) together with
:meth:`Selection.synthetic` (``[B, s]`` cosines of synthetic negatives, MoCHi's);
see :meth:`negatives.methods.loss.ContrastiveLoss.reference` for the loss they
define.  It is stored in whichever form is cheapest for the policy that made
it -- a mask, the ``[B, n]`` positions kept or removed, a few candidates
exchanged (:class:`~negatives.policies.encodings.Swap`), only the first
``width`` columns -- and only this module reads those forms: the loss asks
the selection for its terms (:meth:`Selection.terms`, :meth:`Selection.dense`).

:func:`select` applies a policy in its mode: in ``replace`` mode the removed
candidates are replaced by older ones (:func:`replace_removed`, :func:`stand_ins`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from ..losses.kernel import Terms
from .candidates import Candidates
from .encodings import Mix, Swap

if TYPE_CHECKING:  # pragma: no cover
    from .base import NegativePolicy

__all__ = ["Selection", "select", "replace_removed", "stand_ins"]


@dataclass(frozen=True)
class Selection:
    """Which candidates count for each query, plus any synthetic negatives.

    Made by a policy with one of::

        Selection.every()              every candidate counts
        Selection.where(keep)          keep [B, K] bool
        Selection.at(index)            index [B, n]: the positions kept (n for every query)
        Selection.without(index)       index [B, r]: distinct positions removed, all others kept
        Selection.exchanging(swap)     a few candidates exchanged one for one (Swap)

    and ``.with_mix(mix)`` to add synthetic negatives given by their cosines
    (:class:`~negatives.policies.encodings.Mix`).  Read with :meth:`mask`,
    :meth:`synthetic` and :meth:`kept_per_query`.

    >>> Selection.at(torch.tensor([[2, 0]])).mask((1, 4))
    tensor([[ True, False,  True, False]])
    """

    _keep: Tensor | None = None           # [B, w] bool
    _index: Tensor | None = None          # [B, n] positions kept
    _drop: Tensor | None = None           # [B, r] positions removed
    _mix: Mix | None = None               # s synthetic negatives
    _width: int | None = None             # only the first `width` columns count (replace mode)
    _swap: Swap | None = None             # [B, n] exchanged (alone, or with _width)

    @classmethod
    def every(cls) -> "Selection":
        return cls()

    @classmethod
    def where(cls, keep: Tensor | None) -> "Selection":
        """``keep [B, K]`` bool (None: every candidate)."""
        return cls(_keep=keep)

    @classmethod
    def at(cls, index: Tensor) -> "Selection":
        """``index [B, n]``: the positions each query keeps (the loss then reads ``[B, n]``)."""
        return cls(_index=index)

    @classmethod
    def without(cls, index: Tensor) -> "Selection":
        """``index [B, r]``: distinct positions each query does not see, every other kept."""
        return cls(_drop=index)

    @classmethod
    def exchanging(cls, swap: Swap) -> "Selection":
        return cls(_swap=swap)

    def with_mix(self, mix: Mix | None) -> "Selection":
        return dataclasses.replace(self, _mix=mix)

    @property
    def has_synthetic(self) -> bool:
        """Whether the selection adds synthetic negatives."""
        return self._mix is not None

    # ---------------------------------------------------------------- meaning

    def mask(self, shape: tuple[int, int], device=None) -> Tensor | None:
        """The selection as a ``[B, K]`` bool mask (None: all kept)."""
        if self._swap is not None:
            sw = self._swap
            m = torch.ones(shape, dtype=torch.bool, device=sw.at.device)
            if self._width is not None:
                m[:, self._width:] = False
            m.scatter_(1, sw.at, False)
            return m.scatter_(1, sw.to, sw.valid)
        if self._width is not None and self._width < shape[1]:
            b, k = shape
            first = dataclasses.replace(self, _width=None).mask((b, self._width), device)
            if first is None:
                first = torch.ones((b, self._width), dtype=torch.bool, device=device)
            return torch.cat([first, first.new_zeros((b, k - self._width))], dim=1)
        if self._index is not None:
            m = torch.zeros(shape, dtype=torch.bool, device=self._index.device)
            return m.scatter_(1, self._index, True)
        if self._drop is not None:
            m = torch.ones(shape, dtype=torch.bool, device=self._drop.device)
            return m.scatter_(1, self._drop, False)
        return self._keep

    def synthetic(self, q: Tensor, sim: Tensor) -> Tensor | None:
        """``[B, s]`` cosines of the synthetic negatives to the queries ``q
        [B, D]``, from ``sim [B, K]`` (gradient to the query only), or None."""
        return None if self._mix is None else self._mix.logits(q, sim)

    def kept_per_query(self, num_candidates: int) -> Tensor:
        """Mean count of negatives a query sees, synthetic ones included (a 0-d tensor: no host sync)."""
        if self._width is not None:
            num_candidates = min(num_candidates, self._width)
        if self._index is not None:
            n = torch.tensor(float(self._index.shape[1]))
        elif self._drop is not None:
            n = torch.tensor(float(num_candidates - self._drop.shape[1]))
        elif self._keep is not None:
            n = torch.count_nonzero(self._keep).float() / self._keep.shape[0]
        elif self._swap is not None:
            at, valid = self._swap.at, self._swap.valid
            n = (num_candidates - at.shape[1]) + torch.count_nonzero(valid).float() / max(1, at.shape[0])
        else:
            n = torch.tensor(float(num_candidates))
        if self._mix is not None:
            n = n + self._mix.i.shape[1]
        return n

    # ------------------------------------------------------- for the fast loss

    def fuses(self, own_synthetic_sim: bool = False) -> bool:
        """Whether :meth:`terms` describes the selection on the full ``sim``
        (not for kept positions, which the loss gathers, nor for synthetic
        negatives read from cosines other than ``sim``)."""
        return self._index is None and (self._mix is None or not own_synthetic_sim)

    def terms(self, q: Tensor) -> Terms:
        """The selection as the terms of InfoNCE's negative sum over ``sim``
        (for :func:`negatives.losses.info_nce.fused_info_nce`; needs :meth:`fuses`)."""
        qq = None if self._mix is None else (q * q.detach()).sum(1, keepdim=True)   # [B, 1], as Mix.logits
        return Terms(keep=self._keep, drop_index=self._drop, width=self._width, swap=self._swap, mix=self._mix,
                     qq=qq)

    def dense(self, sim: Tensor, q: Tensor, synthetic_sim: Tensor | None = None
              ) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """What any loss can read: ``(neg [B, n], keep [B, n] bool or None,
        synthetic [B, s] or None)`` -- the cosines of the candidates, gathered
        when the selection keeps the same count for every query, a mask over
        them, and the synthetic negatives' cosines (read from
        ``synthetic_sim``, default ``sim``)."""
        sel = self
        if sel._swap is not None:
            # the swap as the mask it stands for (its stand-ins may lie past `width`)
            sel = Selection(_keep=sel.mask(sim.shape), _mix=sel._mix)
        if sel._width is not None:
            sim = sim[:, :sel._width]
            synthetic_sim = None if synthetic_sim is None else synthetic_sim[:, :sel._width]
        neg, keep = sim, sel._keep
        if sel._index is not None:
            neg, keep = sim.gather(1, sel._index), None                                # [B, n]
        elif sel._drop is not None:
            keep = sel.mask(sim.shape)
        synthetic = None
        if sel._mix is not None:
            # read from the full [B, K] cosines: the mix's positions are candidates'
            cosines = sim if synthetic_sim is None else synthetic_sim
            synthetic = sel._mix.logits(q, cosines).to(neg.dtype)                    # [B, s]
        return neg, keep, synthetic


def replace_removed(keep: Tensor, eligible: Tensor) -> Tensor:
    """Replace mode: which older negatives stand in for the removed ones.

    keep:     ``[B, K]`` bool, the policy's choice among the K newest negatives;
    eligible: ``[B, E]`` bool, the E older negatives, newest first, that may
              stand in.
    Returns ``[B, E]`` bool: for each query, the first ``K - kept`` eligible
    older negatives.  When fewer are eligible, all of them are used and the
    query sees fewer than K negatives (the trainer logs the count; make
    ``queue_extra`` larger to avoid it).
    """
    # int32 counts: a bool sum accumulates in int64, 3-4x slower on CPU
    missing = keep.shape[1] - keep.sum(1, keepdim=True, dtype=torch.int32)
    return eligible & (eligible.cumsum(1, dtype=torch.int32) <= missing)


def stand_ins(removed: Tensor, eligible: Tensor) -> tuple[Tensor, Tensor]:
    """Replace mode for a :class:`~negatives.policies.encodings.Swap`: the stand-in of each removed slot.

    removed:  ``[B, n]`` bool, the slots whose candidate is removed;
    eligible: ``[B, E]`` bool, the E older negatives, newest first, that may
              stand in.
    Returns ``(pos [B, n] int64, found [B, n] bool)``: the removed slots of a
    row, in slot order, take the row's first, second, ... eligible older
    negative (``pos``, a column of ``eligible``); ``found`` is False for a
    slot that is not removed or for which none is left (the query then sees
    fewer than K, as with :func:`replace_removed`, which picks the same
    older negatives).  Reads ``[B, E]`` once (a cumulative count), never a
    ``[B, K]`` mask; no host sync.
    """
    b, n = removed.shape
    e = eligible.shape[1]
    count = eligible.cumsum(1, dtype=torch.int32)                           # [B, E] eligible so far
    # the column of the r-th eligible negative goes to slot r - 1; the rest to a spare slot n
    slot = torch.where(eligible & (count <= n), count - 1, n).long()
    first = torch.zeros((b, n + 1), dtype=torch.long, device=removed.device)
    first.scatter_(1, slot, torch.arange(e, device=removed.device).expand(b, e))
    rank = removed.cumsum(1, dtype=torch.int32) - 1                          # [B, n] among the removed
    total = count[:, -1:] if e else torch.zeros((b, 1), dtype=torch.int32, device=removed.device)
    found = removed & (rank < total)
    return first.gather(1, rank.clamp(min=0).long()), found


def select(policy: "NegativePolicy", sim: Tensor, candidates: Candidates, progress: float = 0.0,
           window: int | None = None) -> Selection:
    """Apply ``policy`` to one step's ``sim [B, M]``, in its mode.

    ``drop`` mode (``window`` None or M): the policy's selection as is.
    ``replace`` mode: the candidates are ordered newest first and the policy
    sees the ``window = K`` newest; each removed one is replaced by the next
    older one the policy allows (:func:`replace_removed`), so the selection
    covers all ``M`` columns.  Stored as a mask, or, when every query loses
    the same count r and any older negative may stand in (a band), as the
    band's removed positions within the first ``K + r`` columns, or, for a
    swap (a narrow band and a class relation), as the swap with the
    stand-ins in its removed slots (:func:`stand_ins`).  On CPU a mask stops
    at the last older column any query takes.
    """
    if window is None or window == sim.shape[1]:
        return policy(sim, candidates, progress)
    newest = candidates.rows(0, window)
    sel = policy(sim[:, :window], newest, progress)
    if sel._swap is not None:
        # a few removed per query (a narrow band and a class relation): the
        # stand-ins go into the swap's removed slots, read by the loss from
        # sim's older columns at swap.to (no [B, K + E] mask)
        sw, removed, older_count = sel._swap, ~sel._swap.valid, sim.shape[1] - window
        # on CPU (reading back is free) the stand-ins are looked for among the
        # newest older negatives first, 64 per slot, twice as many until every
        # removed slot has one or the queue ends; elsewhere among all of them
        span = older_count if sim.device.type != "cpu" else min(older_count, 64 * removed.shape[1])
        while True:
            eligible = policy.eligible(candidates.rows(window, window + span))
            if eligible is None:
                eligible = torch.ones((sim.shape[0], span), dtype=torch.bool, device=sim.device)
            pos, found = stand_ins(removed, eligible.expand(sim.shape[0], -1))
            if span == older_count or torch.equal(found, removed):
                break
            span = min(older_count, 2 * span)
        swap = Swap(at=sw.at, to=torch.where(found, pos + window, sw.to), valid=sw.valid | found)
        return Selection(_swap=swap, _mix=sel._mix, _width=window)
    older = candidates.rows(window, sim.shape[1])
    eligible = policy.eligible(older)
    if eligible is None and sel._keep is None and sel._index is None:
        # the same count r removed from every query (a band) and any older
        # negative may stand in: the stand-ins are the r next-older columns
        # for every query, so the loss sees the first K + r (no mask)
        removed = 0 if sel._drop is None else sel._drop.shape[1]
        return Selection(_drop=sel._drop, _mix=sel._mix, _width=min(window + removed, sim.shape[1]))
    keep = sel.mask((sim.shape[0], window))
    if keep is None:
        keep = torch.ones((sim.shape[0], window), dtype=torch.bool, device=sim.device)
    if eligible is None:
        eligible = torch.ones((sim.shape[0], sim.shape[1] - window), dtype=torch.bool, device=sim.device)
    stand_in = replace_removed(keep, eligible.expand(sim.shape[0], -1))
    if sim.device.type == "cpu":
        # reading back is free on a CPU: drop the older columns no query
        # takes a stand-in from (the loss then reads the first K + used)
        taken = stand_in.any(dim=0).nonzero()
        used = int(taken[-1]) + 1 if len(taken) else 0
        return Selection(_keep=torch.cat([keep, stand_in[:, :used]], dim=1), _mix=sel._mix, _width=window + used)
    return Selection(_keep=torch.cat([keep, stand_in], dim=1), _mix=sel._mix)
