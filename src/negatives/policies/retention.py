"""A queue that retains consistently hard negatives (Cai et al.'s future work).

MoCo's queue evicts the oldest keys.  Cai et al. find (their Figure 6) that
some negatives are hard for many queries; ``retain-hard[r]`` keeps those
longer.  Every key carries a running *hard-frequency*: the fraction of the
queries that have seen it (since it entered the queue) for which it was among
their hardest ``c`` percent (``c = 5`` by default, the paper's hardest 5%;
``round(K c / 100)`` keys per query, :func:`negatives.policies.band_ranks`).

Eviction, for a batch of ``B`` new keys into a queue of ``K`` slots:

1. the *retained* keys are the at most ``R = floor(r K)`` keys with the
   highest hard-frequency, among keys whose frequency is above 0 (ties: the
   newer key first, then the lower slot);
2. the ``B`` oldest keys that are not retained are evicted (oldest first),
   and the new keys take their slots in batch order, with fresh counts.

So a key is never evicted while it is among the ``R`` hardest-so-far, and a
retained key that drops out of that set is evicted by age like any other.
With ``r = 0`` (or before anything has been hard) this is exactly MoCo's
FIFO queue.  ``K - R >= B`` is required.

How MoCo uses it without knowing the policy: ``MoCo.__init__`` asks the
policy for its queue (``policy.make_queue(size, dim, generator)``; the base
policy returns a plain :class:`~negatives.queue.KeyQueue`).
:class:`RetainHard` returns a :class:`RetainingQueue` and keeps a reference
to it; at every step its ``__call__`` sees ``sim [B, K]`` whose column ``j``
is the queue's slot ``j`` (MoCo, ``mode: drop``) and records which keys were
each query's hardest, before MoCo enqueues the batch.  All negatives are
kept for the loss.  SimCLR has no queue: there the policy is ``all``.
"""

from __future__ import annotations

import math
import re

import torch
from torch import Tensor

from ..queue import KeyQueue
from ..runtime.distributed import sum_, world_size
from .bands import band_ranks, top_k
from .base import NegativePolicy
from .candidates import Candidates
from .grammar import SEP, PolicyError, exact, fields, fmt_number, match_form, numbers
from .selection import Selection

__all__ = ["RetainingQueue", "RetainHard", "parse", "GRAMMAR"]

GRAMMAR = ("'retain-hard[r]' or 'retain-hard[r,c]': the queue keeps up to a fraction r (0 < r < 1) of its slots "
           "for the keys most often among the queries' hardest c percent (0 < c < 100, default 5)")


class RetainingQueue(KeyQueue):
    """A key queue that keeps the consistently hard keys past their turn.

    A :class:`~negatives.queue.KeyQueue` that evicts the oldest keys except
    the ``R = floor(retain K)`` hardest-so-far (module docstring).

    Extra buffers (saved in checkpoints):

    hard:  ``[K]`` int64, queries for which the key was among their hardest
    seen:  ``[K]`` int64, queries that have seen the key
    stamp: ``[K]`` int64, insertion order (start-up keys: ``-K .. -1`` in slot
           order, then 0, 1, 2, ... for every key enqueued)
    clock: number of keys enqueued so far

    ``ptr`` is still advanced by ``B`` per batch but is not the oldest slot
    any more: :meth:`ordered` and :meth:`newest_first` read ``stamp``.
    """

    def __init__(self, size: int, dim: int, retain: float, generator: torch.Generator | None = None):
        super().__init__(size, dim, generator=generator)
        if not 0.0 <= retain < 1.0:
            raise ValueError(f"retain must lie in [0, 1), got {retain}")
        self.retain = float(retain)
        self.register_buffer("hard", torch.zeros(size, dtype=torch.long))
        self.register_buffer("seen", torch.zeros(size, dtype=torch.long))
        self.register_buffer("stamp", torch.arange(size, dtype=torch.long) - size)
        self.register_buffer("clock", torch.zeros((), dtype=torch.long))

    @property
    def retained_slots(self) -> int:
        """``R = floor(retain K)``."""
        return math.floor(self.retain * self.size + 1e-9)

    def frequency(self) -> Tensor:
        """``[K]`` hard-frequency of each key: ``hard / seen`` (0 when unseen)."""
        return self.hard.double() / self.seen.clamp(min=1).double()

    @torch.no_grad()
    def record(self, hardest: Tensor) -> None:
        """Count one step: ``hardest [B, n]`` int64, the slots that were each
        query's ``n`` hardest (distinct within a row)."""
        # index_add_, not bincount: bincount's output size is data-dependent (a host sync on GPU)
        flat = hardest.reshape(-1)
        counts = torch.zeros_like(self.hard).index_add_(0, flat, torch.ones_like(flat, dtype=self.hard.dtype))
        # across processes every rank counts its own queries: the sums keep the ranks' queues one queue
        self.hard += sum_(counts)
        self.seen += hardest.shape[0] * world_size()

    def retained(self) -> Tensor:
        """``[K]`` bool: the keys protected from the next eviction."""
        r = self.retained_slots
        protect = torch.zeros(self.size, dtype=torch.bool, device=self.keys.device)
        if r == 0:
            return protect
        freq = self.frequency()
        newest = torch.argsort(self.stamp, descending=True, stable=True)        # ties: newer first
        ranked = newest[torch.argsort(freq[newest], descending=True, stable=True)]
        top = ranked[:r]
        # protect[top] = freq > 0: no boolean indexing (its shape would need a host sync)
        return protect.index_put_((top,), freq[top] > 0)

    @torch.no_grad()
    def enqueue(self, keys: Tensor, labels: Tensor, indices: Tensor) -> None:
        """Put ``keys [B, D]`` (``labels [B]``, ``indices [B]``) in the slots of
        the ``B`` oldest keys that are not retained."""
        b = keys.shape[0]
        if b > self.size - self.retained_slots:
            raise ValueError(f"a batch of {b} keys does not fit in the {self.size - self.retained_slots} "
                             f"non-retained slots of a queue of {self.size} (retain {self.retain:g}); "
                             "lower r or enlarge the queue")
        protect = self.retained()
        age = self.stamp.masked_fill(protect, torch.iinfo(torch.long).max)
        slots = torch.argsort(age, stable=True)[:b]                              # oldest first
        self.keys[slots] = keys.detach().to(self.keys.dtype)
        self.labels[slots] = labels
        self.indices[slots] = indices
        self.stamp[slots] = self.clock + torch.arange(b, device=self.stamp.device)
        # index_fill_, not `hard[slots] = 0`: on a GPU that assignment copies the
        # 0 from the host with a blocking copy (index_put_ of a CPU scalar)
        self.hard.index_fill_(0, slots, 0)
        self.seen.index_fill_(0, slots, 0)
        self.clock += b
        self.ptr.add_(b).remainder_(self.size)

    def ordered(self) -> tuple[Tensor, Tensor, Tensor]:
        """``(keys [K, D], labels [K], indices [K])`` oldest first (by ``stamp``)."""
        order = torch.argsort(self.stamp)
        return self.keys[order], self.labels[order], self.indices[order]

    def newest_first(self) -> Tensor:
        """``[K]`` slots, newest first."""
        return torch.argsort(self.stamp, descending=True)


class RetainHard(NegativePolicy):
    """Retain hard negatives in the queue for longer (``retain-hard[r,c]``).

    ``retain-hard[r]`` / ``retain-hard[r,c]``: every negative is used; the
    queue retains the keys most often among the queries' hardest ``c``%.

    ``sim [B, K] -> Selection.every()`` (all kept); records the hardest
    ``round(K c / 100)`` slots of every query in the queue it made.
    """

    needs_queue = True

    def __init__(self, retain: float, hard_pct: float = 5.0):
        self.retain, self.hard_pct = float(retain), float(hard_pct)
        self.name = (f"retain-hard[{fmt_number(self.retain)}]" if self.hard_pct == 5.0
                     else f"retain-hard[{fmt_number(self.retain)}{SEP}{fmt_number(self.hard_pct)}]")
        if not 0.0 < self.retain < 1.0:
            raise PolicyError(f"policy {self.name!r}: r must lie in (0, 1), got {fmt_number(self.retain)}; "
                              f"allowed: {GRAMMAR}")
        if not 0.0 < self.hard_pct < 100.0:
            raise PolicyError(f"policy {self.name!r}: c must lie in (0, 100), got {fmt_number(self.hard_pct)}; "
                              f"allowed: {GRAMMAR}")
        self.queue: RetainingQueue | None = None

    def make_queue(self, size: int, dim: int, generator: torch.Generator | None = None) -> RetainingQueue:
        self.queue = RetainingQueue(size, dim, self.retain, generator=generator)
        return self.queue

    def hard_count(self, num_candidates: int) -> int:
        """Keys per query counted as hard: ``round(K c / 100)``."""
        lo, hi = band_ranks(num_candidates, 100 - exact(self.hard_pct), 100)
        return hi - lo

    def validate(self, num_candidates: int, epochs: int | None = None) -> None:
        if self.hard_count(num_candidates) == 0:
            raise PolicyError(f"policy {self.name!r}: the hardest {fmt_number(self.hard_pct)}% of {num_candidates} "
                              "negatives is no negative; raise c or use more negatives")
        if math.floor(self.retain * num_candidates + 1e-9) == 0:
            raise PolicyError(f"policy {self.name!r}: r = {fmt_number(self.retain)} of {num_candidates} slots retains "
                              f"none; allowed: r >= {fmt_number(1 / num_candidates)}")

    def __call__(self, sim: Tensor, candidates: Candidates, progress: float = 0.0) -> Selection:
        q = self.queue
        if q is None or candidates.pool_index is not None:
            return Selection.every()          # called without the queue it made (not in MoCo): nothing to retain
        if sim.shape[1] != q.size:
            raise ValueError(f"policy {self.name!r}: sim has {sim.shape[1]} columns, the queue {q.size} slots; "
                             "the columns must be the queue's slots in order")
        n = self.hard_count(q.size)
        q.record(top_k(sim, n))
        return Selection.every()


#: the form; the numbers are read by the shared number reader (:mod:`.grammar`)
_RE = re.compile(r"^retain-hard\[([^\[\]]*)\]$")


def parse(text: str) -> RetainHard | None:
    """Parse ``retain-hard[...]``; None for any other form.

    ``retain-hard[r]`` / ``retain-hard[r,c]`` -> :class:`RetainHard`; None
    when ``text`` is not of this form; :class:`PolicyError` when it is but is
    malformed.

    >>> parse("retain-hard[0.25]").name
    'retain-hard[0.25]'
    >>> parse("retain-hard[2.5e-1, 5]").name
    'retain-hard[0.25]'
    """
    m = match_form(text, "retain-hard", _RE, GRAMMAR)
    if m is None:
        return None
    return RetainHard(*numbers(fields(m.group(1)), text, "retain-hard policy", GRAMMAR, counts=(1, 2)))
