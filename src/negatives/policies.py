"""Negative policies: which of a query's candidate negatives the loss sees.

Every policy is a small object with one interface::

    selection = policy(sim, candidates, progress)

* ``sim``        -- ``[B, K]`` cosine similarity of each query to each candidate
                    negative (its *difficulty*).
* ``candidates`` -- :class:`Candidates`, what is known about the queries and
                    their K candidates (labels, dataset indices, embeddings);
                    policies that do not need it ignore it.
* ``progress``   -- fraction of training done, in ``[0, 1]`` (for annealed
                    policies; the band policies ignore it).

and returns a :class:`Selection`: a ``[B, K]`` boolean ``keep`` mask or the
``[B, n]`` positions kept (``None``: every negative is kept), and optionally
synthetic negatives (``extra`` embeddings, or ``mix`` cosines).  The method
turns the selection into the loss; the trainer never knows which policy it
runs.

A policy is named by a short string that is parsed and validated in one place,
:func:`parse_policy`, and is also its results folder name:

==============================  ===========================================
``all``                         every negative (the baseline)
``keep[a,b)``                   only the negatives whose difficulty
                                percentile is in ``[a, b)`` (Figure 2)
``drop[a,b)``                   every negative except that band (Figure 3)
``drop-same-class``             every negative not of the query's class
                                (Table 1; reads labels)
``drop[a,b)&same-class``        remove the band's negatives of the query's
                                class (Table 1; reads labels)
``drop[a,b)&other-class``       remove the band's negatives of other classes
``<drop policy>@replace``       the same removal in ``replace`` mode: each
                                removed negative is replaced by the next
                                older one, every query sees exactly K
==============================  ===========================================

Percentiles.  For one query the K candidates are ranked by difficulty, rank
``r = 0`` the easiest and ``r = K - 1`` the hardest; the percentile of rank
``r`` is ``100 r / K``.  A band ``[a, b)`` of width ``w = b - a`` holds
exactly ``n = round(K w / 100)`` negatives (half rounds up, in exact
arithmetic on the percentiles as written: :func:`band_ranks`): the ranks
``lo .. lo + n - 1`` with ``lo = round(K a / 100)``, moved down where needed
so the band ends at rank ``K`` at the latest.  When ``K a / 100``
and ``K b / 100`` are whole numbers these are exactly the ranks with
``a <= p < b``; otherwise the band differs from that set by at most one
negative at an edge, which is the price of the exact count.  A band touching
100 always holds the hardest ``n``; one touching 0 the easiest ``n``.
Ties are broken by the partial selection's order (:func:`top_k`: numpy's
``argpartition`` on CPU, :func:`torch.topk` elsewhere), which is
deterministic for a given device and input.
"""

from __future__ import annotations

import functools
import math
import re
import dataclasses
from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction

import numpy as np
import torch
from torch import Tensor

from .queue import KeyQueue

__all__ = [
    "Candidates",
    "Selection",
    "Mix",
    "Swap",
    "NegativePolicy",
    "All",
    "Band",
    "ClassFilter",
    "Replace",
    "replace_removed",
    "stand_ins",
    "select",
    "PolicyError",
    "parse_policy",
    "band_ranks",
    "exact",
]


#: the separator of numbers in canonical policy names (folder names): never a
#: comma, which Snakemake cannot pass in a wildcard to a cluster job (its
#: --target-jobs splits on commas); the parser reads both
SEP = "_"


class PolicyError(ValueError):
    """A policy string that cannot be parsed or makes no sense."""


@dataclass(frozen=True)
class Candidates:
    """What is known about a step's queries and their candidate negatives.

    The candidates are rows of a *pool* of ``M`` embedded views:

    labels:       ``[M]`` int64 class label of each pool row (-1 when unknown).
    indices:      ``[M]`` int64 dataset index of each pool row (-1 when unknown).
    keys:         ``[M, D]`` the pool's embeddings (detached, unit norm).
    query_labels: ``[B]`` int64 class label of each query (-1 when unknown).
    queries:      ``[B, D]`` the query embeddings (detached, unit norm).
    pool_index:   ``[B, K]`` int64, pool row of candidate ``j`` of query ``i``
                  (SimCLR: each view's candidates are the *other* views);
                  ``None`` when every query's candidates are the whole pool in
                  order (MoCo: the pool is the queue, ``K = M``).

    Every field is optional; a policy that needs one that is missing raises.
    """

    labels: Tensor | None = None
    indices: Tensor | None = None
    keys: Tensor | None = None
    query_labels: Tensor | None = None
    queries: Tensor | None = None
    pool_index: Tensor | None = None

    def candidate_labels(self) -> Tensor:
        """Label of each candidate: ``[K]`` (shared pool) or ``[B, K]``."""
        if self.labels is None:
            raise PolicyError("this policy needs the negatives' class labels, which this step does not have")
        return self.labels if self.pool_index is None else self.labels[self.pool_index]

    def _same_class_and_known(self, at: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``same`` (both labels known and equal) and ``known`` (the
        candidate's label is known), for every candidate (``[B, K]``; known
        ``[K]`` for a shared pool) or at the positions ``at [B, n]`` only.
        ``same`` is one comparison: an unknown query label is mapped to -2,
        which no candidate label (-1 when unknown) equals -- on CPU several
        times faster than combining broadcast bool masks."""
        if self.query_labels is None:
            raise PolicyError("this policy needs the queries' class labels, which this step does not have")
        cand = self.candidate_labels().clamp(min=-1)
        if at is not None:
            cand = cand[at] if cand.dim() == 1 else cand.gather(1, at)
        q = self.query_labels.unsqueeze(1)
        return cand == torch.where(q >= 0, q, -2), cand >= 0

    def same_class(self, at: Tensor | None = None) -> Tensor:
        """``[B, K]`` bool (or ``[B, n]`` at the positions ``at``): the
        candidate has the query's class (both known)."""
        return self._same_class_and_known(at)[0]

    def other_class(self, at: Tensor | None = None) -> Tensor:
        """``[B, K]`` bool (or ``[B, n]`` at the positions ``at``): the
        candidate's class is known and not the query's (nothing for a query
        of unknown class)."""
        same, known = self._same_class_and_known(at)
        other = ~same & known
        # & with the [B, 1] query mask as a uint8 product: a row-broadcast
        # bool & is about 10x slower on CPU
        query_known = (self.query_labels >= 0).unsqueeze(1)
        return (other.view(torch.uint8) * query_known.view(torch.uint8)).view(torch.bool)

    def rows(self, start: int, stop: int) -> "Candidates":
        """The candidates ``start:stop`` of a shared pool (MoCo's queue)."""
        if self.pool_index is not None:
            raise ValueError("rows() needs a shared pool (pool_index None)")
        cut = lambda t: None if t is None else t[start:stop]  # noqa: E731
        return Candidates(cut(self.labels), cut(self.indices), cut(self.keys), self.query_labels, self.queries)

    def embeddings(self, index: Tensor) -> Tensor:
        """Embeddings of the candidates ``index [B, n]`` of each query: ``[B, n, D]``."""
        if self.keys is None:
            raise PolicyError("this policy needs the negatives' embeddings, which this step does not have")
        rows = index if self.pool_index is None else self.pool_index.gather(1, index)
        # index_select on flattened rows: several times faster on CPU than keys[rows]
        return self.keys.index_select(0, rows.reshape(-1)).view(*rows.shape, self.keys.shape[1])


@dataclass(frozen=True)
class Mix:
    """Synthetic negatives given by their cosines to the query, mixed from the
    candidates' cosines (the cheap form of ``Selection.extra``: no synthetic
    embedding is built)::

        cos[b, t] = a[b, t] sim[b, i[b, t]] + c[b, t] sim[b, j[b, t]] + d[b, t] (q_b . q_b)

    i, j:    ``[B, s]`` int64 positions into ``sim``'s columns (the candidates);
    a, c, d: ``[B, s]`` float coefficients, detached constants.

    This is exactly ``q . h`` for the detached vector ``h = a n_i + c n_j + d q``
    (``n`` the candidates' embeddings; MoCHi's coefficients make it unit
    norm), and :meth:`logits` gives it the same gradient: ``h`` to the query.
    """

    i: Tensor
    j: Tensor
    a: Tensor
    c: Tensor
    d: Tensor

    def logits(self, q: Tensor, sim: Tensor) -> Tensor:
        """``q [B, D]`` queries, ``sim [B, K]`` query-candidate cosines whose
        gradient reaches the query only (``q @ keys.T``, keys detached) ->
        ``[B, s]``.  The gradient to ``q`` is ``a n_i + c n_j + d q``: through
        ``sim`` for the candidates, and ``q . q`` is taken as
        ``q . q.detach()`` so that its term contributes ``d q``, not ``2 d q``.
        """
        qq = (q * q.detach()).sum(1, keepdim=True)                               # [B, 1]
        # one gather of both parents (one scatter in the backward pass)
        return self.combine(sim.gather(1, self.parents()), qq)

    def parents(self) -> Tensor:
        """``[B, 2s]``: the positions ``i``, then ``j``."""
        return torch.cat([self.i, self.j], dim=1)

    def combine(self, parent_cos: Tensor, qq: Tensor) -> Tensor:
        """``a sim_i + c sim_j + d (q . q)`` from the parents' cosines
        ``[B, 2s]`` (at :meth:`parents`) and ``qq [B, 1]`` -> ``[B, s]``."""
        s = self.i.shape[1]
        return self.a * parent_cos[:, :s] + self.c * parent_cos[:, s:] + self.d * qq


@dataclass(frozen=True)
class Swap:
    """A few candidates of each query exchanged one for one: the cheap form
    of a selection that removes at most ``n`` per query (a narrow band and a
    class relation), and, in replace mode, of the stand-ins put in their place.

    at:    ``[B, n]`` int64, distinct positions among the first ``width``
           candidates (all of them when ``width`` is None), each of whose own
           term is taken out;
    to:    ``[B, n]`` int64, the candidate counted in each one's place: its
           own position to keep it, a stand-in's (replace mode: an older
           candidate, past ``width``), and its own position when ``valid`` is
           False;
    valid: ``[B, n]`` bool, False: the slot counts nothing (removed, no
           stand-in).

    The ``to`` positions of a row are distinct, and no stand-in is an ``at``
    position, so the candidates a query sees are the first ``width`` minus
    ``at`` plus the valid ``to``: exactly :meth:`Selection.mask`.  The loss
    reads ``[B, n]`` here instead of a ``[B, K]`` mask
    (:class:`negatives.moco.KeptExpSum`).
    """

    at: Tensor
    to: Tensor
    valid: Tensor


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

    None of them: every negative is kept.  Besides, optionally

    extra: ``[B, s, D]`` synthetic negatives (unit norm, detached) that the
           loss adds to each query's negatives; they never enter the queue.
    mix:   :class:`Mix`, ``s`` synthetic negatives given by their cosines
           (the cheap form of ``extra``, used by MoCHi).
    swap:  :class:`Swap`, ``[B, n]`` candidates exchanged one for one: those
           at ``swap.at`` out, those at ``swap.to`` in where ``swap.valid``
           (with no ``keep``, ``index`` or ``drop_index``).
    width: only the first ``width`` candidates count, and ``keep``,
           ``index``, ``drop_index`` and ``swap.at`` refer to them (replace
           mode, when every query's stand-ins are the same next-older columns,
           or are given by ``swap.to``); None: all.
    """

    keep: Tensor | None = None
    index: Tensor | None = None
    drop_index: Tensor | None = None
    extra: Tensor | None = None
    mix: Mix | None = None
    width: int | None = None
    swap: Swap | None = None

    def mask(self, shape: tuple[int, int], device=None) -> Tensor | None:
        """The selection as a ``[B, K]`` bool mask (None: all kept)."""
        if self.swap is not None:
            sw = self.swap
            m = torch.ones(shape, dtype=torch.bool, device=sw.at.device)
            if self.width is not None:
                m[:, self.width:] = False
            m.scatter_(1, sw.at, False)
            return m.scatter_(1, sw.to, sw.valid)
        if self.width is not None and self.width < shape[1]:
            b, k = shape
            first = dataclasses.replace(self, width=None).mask((b, self.width), device)
            if first is None:
                first = torch.ones((b, self.width), dtype=torch.bool, device=device)
            return torch.cat([first, first.new_zeros((b, k - self.width))], dim=1)
        if self.index is not None:
            m = torch.zeros(shape, dtype=torch.bool, device=self.index.device)
            return m.scatter_(1, self.index, True)
        if self.drop_index is not None:
            m = torch.ones(shape, dtype=torch.bool, device=self.drop_index.device)
            return m.scatter_(1, self.drop_index, False)
        return self.keep

    def kept_per_query(self, num_candidates: int) -> Tensor:
        """Mean count of negatives a query sees (a 0-d tensor: no host sync)."""
        if self.width is not None:
            num_candidates = min(num_candidates, self.width)
        if self.index is not None:
            n = torch.tensor(float(self.index.shape[1]))
        elif self.drop_index is not None:
            n = torch.tensor(float(num_candidates - self.drop_index.shape[1]))
        elif self.keep is not None:
            n = torch.count_nonzero(self.keep).float() / self.keep.shape[0]
        elif self.swap is not None:
            at, valid = self.swap.at, self.swap.valid
            n = (num_candidates - at.shape[1]) + torch.count_nonzero(valid).float() / max(1, at.shape[0])
        else:
            n = torch.tensor(float(num_candidates))
        if self.extra is not None:
            n = n + self.extra.shape[1]
        if self.mix is not None:
            n = n + self.mix.i.shape[1]
        return n


class NegativePolicy:
    """Base class: keep every negative.

    Besides ``__call__``, a policy may override:

    * :meth:`validate` -- raise :class:`PolicyError` when the policy makes no
      sense for ``num_candidates`` negatives or ``epochs`` of training (called
      by the config check before any job starts, and by the trainer);
    * :meth:`start` -- told the length of training once, before the first step;
    * :meth:`eligible` -- in ``replace`` mode, which older negatives may stand
      in for removed ones (default: any);
    * ``loss`` -- a callable with :func:`negatives.moco.info_nce`'s signature,
      for policies that change the loss rather than the negatives.
    """

    #: the policy's canonical string (its results folder name)
    name: str = "all"
    #: True when the policy reads class labels (an oracle, not self-supervised)
    uses_labels: bool = False
    #: "drop": removed negatives are absent; "replace": each is replaced by the
    #: next older negative of a longer queue, so every query sees exactly K
    mode: str = "drop"
    #: None: InfoNCE; otherwise a callable ``(l_pos, neg, keep, temperature) -> loss``
    loss = None

    def __call__(self, sim: Tensor, candidates: Candidates, progress: float = 0.0) -> Selection:
        return Selection(keep=None)

    def validate(self, num_candidates: int, epochs: int | None = None) -> None:
        """Raise :class:`PolicyError` if the policy is empty or meaningless here."""

    def start(self, epochs: int) -> None:
        """Called once by the trainer with the number of epochs."""

    def eligible(self, candidates: Candidates) -> Tensor | None:
        """``[B, E]`` bool: older negatives allowed to replace removed ones
        (``None``: every one)."""
        return None

    def make_queue(self, size: int, dim: int, generator: torch.Generator | None = None):
        """The key queue MoCo keeps for this policy (default: the FIFO
        :class:`negatives.queue.KeyQueue`; ``retain-hard`` returns its own)."""
        return KeyQueue(size, dim, generator=generator)

    def __repr__(self) -> str:  # pragma: no cover - cosmetic
        return f"{type(self).__name__}({self.name!r})"


class All(NegativePolicy):
    """The baseline: every candidate negative is used."""

    name = "all"


def exact(x) -> Fraction:
    """A percentile as written: an int or :class:`~fractions.Fraction` as
    it is, a float as its shortest decimal (``99.9 -> 999/10``, never the
    binary ``99.900000000000005684...``), so counts are computed in exact
    arithmetic."""
    if isinstance(x, (int, Fraction)):
        return Fraction(x)
    return _decimal(float(x))


@functools.lru_cache(maxsize=4096)
def _decimal(x: float) -> Fraction:
    return Fraction(repr(x))


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
    """Positions of the ``k`` largest (``largest=False``: smallest) entries of
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


def _rank_window(sim: Tensor, lo: int, hi: int) -> tuple[Tensor | None, Tensor | None]:
    """The ranks ``[lo, hi)`` of every row of ``sim``, as ``(index [B, hi-lo], None)``
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
        _check_band(lo_pct, hi_pct, f"{action}[{lo_pct},{hi_pct})")
        self.action = action
        self.lo_pct = float(lo_pct)
        self.hi_pct = float(hi_pct)
        self.name = f"{action}[{_fmt(lo_pct)}{SEP}{_fmt(hi_pct)})"

    def ranks(self, num_candidates: int) -> tuple[int, int]:
        return band_ranks(num_candidates, self.lo_pct, self.hi_pct)

    def __call__(self, sim: Tensor, candidates: Candidates, progress: float = 0.0) -> Selection:
        lo, hi = self.ranks(sim.shape[1])
        k = sim.shape[1]
        if self.action == "keep":
            if lo == 0 and 0 < k - hi < hi:
                # the easiest hi: cheapest as the K - hi hardest removed
                drop = top_k(sim, k - hi)
                return Selection(drop_index=drop)
            index, mask = _rank_window(sim, lo, hi)
            return Selection(keep=mask, index=index)
        index, mask = _rank_window(sim, lo, hi)
        if index is not None and index.shape[1] < k:
            return Selection(drop_index=index)      # the band's positions are the removed ones
        return Selection(keep=~(mask if index is None else Selection(index=index).mask(sim.shape)))

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
            return Selection(keep=~self._related(candidates).expand_as(sim))
        index, mask = _rank_window(sim, *self.band.ranks(sim.shape[1]))
        if index is None:
            return Selection(keep=~(self._related(candidates).expand_as(sim) & mask))
        # a narrow band: the relation is read at its n positions only, and
        # the related ones are swapped for nothing (no [B, K] comparison or mask)
        return Selection(swap=Swap(at=index, to=index, valid=~self._related(candidates, index)))

    def validate(self, num_candidates: int, epochs: int | None = None) -> None:
        if self.band is not None:
            Band("keep", self.band.lo_pct, self.band.hi_pct).validate(num_candidates, epochs)

    def eligible(self, candidates: Candidates) -> Tensor:
        # a stand-in must not be what the policy removes for its class
        return ~self._related(candidates)


class Replace(NegativePolicy):
    """``<drop policy>@replace``: the same removal, in ``replace`` mode.

    The queue is longer than K (by ``queue_extra``); for each query the
    policy is applied to the K newest negatives, and each removed one is
    replaced by the next older negative that the policy allows to stand in
    (:meth:`NegativePolicy.eligible`; older negatives are not re-ranked), so
    the query sees exactly K.  See :func:`replace_removed`.
    """

    mode = "replace"

    def __init__(self, inner: NegativePolicy):
        if isinstance(inner, Replace) or not inner.name.startswith("drop"):
            raise PolicyError(f"'@replace' applies to a removal policy (drop...), got {inner.name!r}")
        self.inner = inner
        self.name = f"{inner.name}@replace"
        self.uses_labels = inner.uses_labels

    def __call__(self, sim: Tensor, candidates: Candidates, progress: float = 0.0) -> Selection:
        return self.inner(sim, candidates, progress)

    def validate(self, num_candidates: int, epochs: int | None = None) -> None:
        self.inner.validate(num_candidates, epochs)

    def eligible(self, candidates: Candidates) -> Tensor | None:
        return self.inner.eligible(candidates)


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
    """Replace mode for a :class:`Swap`: the stand-in of each removed slot.

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


# --------------------------------------------------------------------------
# parsing: the one place where a policy string is read and validated
# --------------------------------------------------------------------------

_NUM = r"[0-9]+(?:\.[0-9]+)?"
_BAND = rf"(keep|drop)\[\s*({_NUM})\s*,\s*({_NUM})\s*\)"
_BAND_RE = re.compile(rf"^{_BAND}$")
_CLASS_RE = re.compile(rf"^drop\[\s*({_NUM})\s*,\s*({_NUM})\s*\)\s*&\s*(same-class|other-class)$")

POLICY_GRAMMAR = (
    "'all', 'keep[a,b)' or 'drop[a,b)' with 0 <= a < b <= 100 (percentiles of difficulty), "
    "'drop-same-class', 'drop[a,b)&same-class', 'drop[a,b)&other-class', "
    "and any drop policy followed by '@replace' (removed negatives replaced by older ones); "
    # the neighbouring methods (modules mixing, ring, losses, retention; each has its own GRAMMAR)
    "'mochi[N,s,s']' or 'mochi[N,s,s',w]' (hard negative mixing), "
    "'ring[o,i]' or 'ring[o,i,schedule]' (Wu et al.'s Ring: the o% hardest without the hardest i% of them; "
    "o fixed or moving as 'x->y'), 'curriculum[a0,b0->a1,b1,schedule]' "
    "(schedule: constant, linear, stepS, expL, then optionally the percent of training it takes), "
    "'debiased[tau_plus]', 'hard[beta,tau_plus]', 'retain-hard[r]' or 'retain-hard[r,c]'"
)

#: modules that parse the neighbouring methods' policies: each has
#: ``parse(text) -> NegativePolicy | None`` and ``GRAMMAR``
_EXTENSIONS = ("mixing", "ring", "losses", "retention")


def _parse_extension(t: str) -> NegativePolicy | None:
    import importlib

    for module in _EXTENSIONS:
        policy = importlib.import_module(f"{__package__}.{module}").parse(t)
        if policy is not None:
            return policy
    return None


def _fmt(x: float) -> str:
    """Shortest decimal form, every digit kept: 95.0 -> '95', 99.9 -> '99.9',
    12.3456789 -> '12.3456789' (a name must say the exact band it runs)."""
    text = repr(float(x))
    if "e" in text:
        text = format(Decimal(text), "f")
    return text[:-2] if text.endswith(".0") else text


def _check_band(lo: float, hi: float, text: str) -> None:
    if not (0.0 <= lo <= 100.0 and 0.0 <= hi <= 100.0):
        raise PolicyError(f"policy {text!r}: band bounds must lie in [0, 100], got a={lo}, b={hi}")
    if not lo < hi:
        raise PolicyError(f"policy {text!r}: band needs a < b, got a={lo}, b={hi}")


def match_form(text: str, prefix: str, pattern: re.Pattern, grammar: str) -> re.Match | None:
    """The match of ``pattern`` when ``text`` is a policy of the form
    ``prefix[...]``; None when it is of another form; :class:`PolicyError`
    naming ``grammar`` when it is of this form but malformed.  Every
    policy module's ``parse`` starts here."""
    t = text.strip()
    if not re.match(rf"^{re.escape(prefix)}\b", t):
        return None
    m = pattern.match(t)
    if not m:
        raise PolicyError(f"policy {text!r}: malformed {prefix} policy; allowed: {grammar}")
    return m


def parse_policy(text: str) -> NegativePolicy:
    """Parse a policy string into a policy object; its ``name`` is canonical.

    Numbers are separated by ``,`` or ``_`` on input and by :data:`SEP` in
    the canonical name (the results folder name).

    >>> parse_policy("keep[95,100)").name
    'keep[95_100)'
    >>> parse_policy("drop[99.9, 100)").name
    'drop[99.9_100)'
    >>> parse_policy("drop[99.9_100) & same-class @replace").name
    'drop[99.9_100)&same-class@replace'

    Raises :class:`PolicyError` naming the allowed forms on anything else.
    """
    if not isinstance(text, str):
        raise PolicyError(f"policy must be a string, got {text!r}; allowed: {POLICY_GRAMMAR}")
    t = text.strip().replace(SEP, ",")
    base, sep, mode = t.partition("@")
    base = base.strip()
    if sep:
        if mode.strip() != "replace":
            raise PolicyError(f"policy {text!r}: unknown mode {mode.strip()!r} after '@'; allowed: 'replace'")
        return Replace(_parse_base(base, text))
    return _parse_base(base, text)


def _parse_base(t: str, text: str) -> NegativePolicy:
    if t == "all":
        return All()
    if t == "drop-same-class":
        return ClassFilter("same-class")
    m = _BAND_RE.match(t)
    if m:
        return Band(m.group(1), float(m.group(2)), float(m.group(3)))
    m = _CLASS_RE.match(t)
    if m:
        return ClassFilter(m.group(3), Band("drop", float(m.group(1)), float(m.group(2))))
    if re.match(r"^(keep|drop)\[", t):
        # recognisably a band with bad bounds: say which part is wrong
        nums = re.findall(r"-?[0-9]+(?:\.[0-9]+)?", t)
        if len(nums) == 2 and (t.endswith(")") or "&" in t):
            _check_band(float(nums[0]), float(nums[1]), t)
        raise PolicyError(f"policy {text!r}: malformed band; allowed: {POLICY_GRAMMAR}")
    policy = _parse_extension(t)
    if policy is not None:
        return policy
    raise PolicyError(f"unknown policy {text!r}; allowed: {POLICY_GRAMMAR}")


def select(policy: NegativePolicy, sim: Tensor, candidates: Candidates, progress: float = 0.0,
           window: int | None = None) -> Selection:
    """Apply ``policy`` to one step's ``sim [B, M]``, in its mode.

    ``drop`` mode (``window`` None or M): the policy's selection as is.
    ``replace`` mode: the candidates are ordered newest first and the policy
    sees the ``window = K`` newest; the removed ones are replaced by older
    ones (:func:`replace_removed`).  Returns a ``[B, M]`` keep mask then, or,
    when every query loses the same count r and any older negative may stand
    in (a band), the band's ``drop_index`` with ``width = K + r``, or, for a
    :class:`Swap` (a narrow band and a class relation), the swap with the
    stand-ins in its removed slots (:func:`stand_ins`) and ``width = K``.  On
    CPU a mask stops at the last older column any query takes (``width``).
    """
    if window is None or window == sim.shape[1]:
        return policy(sim, candidates, progress)
    newest = candidates.rows(0, window)
    sel = policy(sim[:, :window], newest, progress)
    if sel.swap is not None:
        # a few removed per query (a narrow band and a class relation): the
        # stand-ins go into the swap's removed slots, read by the loss from
        # sim's older columns at swap.to (no [B, K + E] mask)
        sw, removed, older_count = sel.swap, ~sel.swap.valid, sim.shape[1] - window
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
        return Selection(swap=swap, extra=sel.extra, mix=sel.mix, width=window)
    older = candidates.rows(window, sim.shape[1])
    eligible = policy.eligible(older)
    if eligible is None and sel.keep is None and sel.index is None:
        # the same count r removed from every query (a band) and any older
        # negative may stand in: the stand-ins are the r next-older columns
        # for every query, so the loss sees the first K + r (no mask)
        removed = 0 if sel.drop_index is None else sel.drop_index.shape[1]
        return Selection(drop_index=sel.drop_index, extra=sel.extra, mix=sel.mix,
                         width=min(window + removed, sim.shape[1]))
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
        return Selection(keep=torch.cat([keep, stand_in[:, :used]], dim=1), extra=sel.extra, mix=sel.mix,
                         width=window + used)
    return Selection(keep=torch.cat([keep, stand_in], dim=1), extra=sel.extra, mix=sel.mix)
