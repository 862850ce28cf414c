"""A queue that retains consistently hard negatives (Cai et al. 2020, arXiv:2010.06682, future work).

MoCo's queue evicts the oldest keys.  Cai et al. find (their Figure 6) that
some negatives are hard for many queries; ``retain-hard[r]`` keeps those
longer.  Every key carries a running *hard-frequency*: the fraction of the
queries that have seen it (since it entered the queue) for which it was among
their hardest ``c`` percent (``c = 5`` by default, the paper's hardest 5%;
``round(K c / 100)`` keys per query).

Eviction, for a batch of ``B`` new keys into a queue of ``K`` slots:

1. the *retained* keys are the at most ``R = floor(r K)`` keys with the
   highest hard-frequency, among keys whose frequency is above 0 (ties: the
   newer key first, then the lower slot);
2. the ``B`` oldest keys that are not retained are evicted (oldest first),
   and the new keys take their slots in batch order, with fresh counts.

So a key is never evicted while it is among the ``R`` hardest-so-far, and a
retained key that drops out of that set is evicted by age like any other.
With ``r = 0`` (or before anything has been hard) this is exactly MoCo's
FIFO queue.  ``K - R >= B`` is required.  Every negative is kept for the
loss: the queue changes which keys are there, not which count.  MoCo hands
the queue each step's cosines ``sim [B, K]`` (column ``j`` the slot ``j``)
with the keys to enqueue; SimCLR has no queue.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..ranking import percent_of, top_k
from ..runtime.distributed import sum_, world_size
from .fifo import KeyQueue

__all__ = ["RetainingQueue"]


class RetainingQueue(KeyQueue):
    """A key queue that keeps the consistently hard keys past their turn (Cai et al. 2020, arXiv:2010.06682, future work).

    A :class:`~negatives.queues.fifo.KeyQueue` that evicts the oldest keys except
    the ``R = floor(retain K)`` hardest-so-far (module docstring).

    Args:
        size: K; dim: D; generator: for the random start-up keys.
        retain: r, the largest share of the slots kept for hard keys, in [0, 1).
        hard_pct: c, a key is hard for a query among its hardest c percent.

    Extra buffers (saved in checkpoints):

    hard:  ``[K]`` int64, queries for which the key was among their hardest
    seen:  ``[K]`` int64, queries that have seen the key
    stamp: ``[K]`` int64, insertion order (start-up keys: ``-K .. -1`` in slot
           order, then 0, 1, 2, ... for every key enqueued)
    clock: number of keys enqueued so far

    ``ptr`` is still advanced by ``B`` per batch but is not the oldest slot
    any more: :meth:`ordered` and :meth:`newest_first` read ``stamp``.

    >>> queue = RetainingQueue(8, 2, retain=0.25)
    >>> queue.retained_slots, queue.hard.shape                # R = floor(0.25 x 8); [K] counts
    (2, torch.Size([8]))
    """

    def __init__(
        self, size: int, dim: int, retain: float, hard_pct: float = 5.0, generator: torch.Generator | None = None
    ):
        super().__init__(size, dim, generator=generator)
        if not 0.0 <= retain < 1.0:
            raise ValueError(f"retain must lie in [0, 1), got {retain}")
        self.retain, self.hard_pct = float(retain), float(hard_pct)
        self.register_buffer("hard", torch.zeros(size, dtype=torch.long))
        self.register_buffer("seen", torch.zeros(size, dtype=torch.long))
        self.register_buffer("stamp", torch.arange(size, dtype=torch.long) - size)
        self.register_buffer("clock", torch.zeros((), dtype=torch.long))

    @staticmethod
    def hard_count(num_candidates: int, hard_pct: float) -> int:
        """Keys per query counted as hard: ``round(K c / 100)``."""
        return percent_of(num_candidates, hard_pct)

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
        newest = torch.argsort(self.stamp, descending=True, stable=True)  # ties: newer first
        ranked = newest[torch.argsort(freq[newest], descending=True, stable=True)]
        top = ranked[:r]
        # protect[top] = freq > 0: no boolean indexing (its shape would need a host sync)
        return protect.index_put_((top,), freq[top] > 0)

    @torch.no_grad()
    def enqueue(self, keys: Tensor, labels: Tensor, indices: Tensor, sim: Tensor | None = None) -> None:
        """Count the hard keys of ``sim [B, K]`` (the step's cosines to the
        slots; None: none counted), then put ``keys [B, D]`` (``labels [B]``,
        ``indices [B]``) in the slots of the ``B`` oldest keys that are not
        retained.

        >>> queue = RetainingQueue(8, 2, retain=0.25, hard_pct=25)
        >>> sim = torch.tensor([[0.9, 0.8, 0, 0, 0, 0, 0, 0]])     # slots 0 and 1: the query's hardest 2
        >>> queue.enqueue(torch.eye(2), torch.tensor([1, 2]), torch.tensor([0, 1]), sim=sim)
        >>> queue.retained().nonzero().flatten().tolist()       # hard for every query that saw them
        [0, 1]
        """
        if sim is not None:
            if sim.shape[1] != self.size:
                raise ValueError(
                    f"sim has {sim.shape[1]} columns, the queue {self.size} slots; "
                    "the columns must be the queue's slots in order"
                )
            self.record(top_k(sim, self.hard_count(self.size, self.hard_pct)))
        b = keys.shape[0]
        if b > self.size - self.retained_slots:
            raise ValueError(
                f"a batch of {b} keys does not fit in the {self.size - self.retained_slots} "
                f"non-retained slots of a queue of {self.size} (retain {self.retain:g}); "
                "lower r or enlarge the queue"
            )
        protect = self.retained()
        age = self.stamp.masked_fill(protect, torch.iinfo(torch.long).max)
        slots = torch.argsort(age, stable=True)[:b]  # oldest first
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
