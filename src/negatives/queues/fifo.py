"""MoCo's queue of negatives (He et al. 2020, arXiv:1911.05722): the keys of
earlier batches, with each key's label and dataset index (read only by oracle
policies and the analyses)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["KeyQueue"]


class KeyQueue(nn.Module):
    """MoCo's FIFO queue of keys from earlier batches (He et al. 2020, arXiv:1911.05722, Sec. 3.2).

    The newest batch's keys overwrite the oldest ones; each key keeps its label and index.

    keys:    ``[K, D]`` float, L2-normalised (random unit vectors at start)
    labels:  ``[K]`` int64, -1 for the random start-up keys
    indices: ``[K]`` int64, -1 for the random start-up keys
    ptr:     position of the oldest key (the next to be overwritten)

    :meth:`ordered` returns the keys oldest first.  K must be a multiple of
    the batch size, as in the reference implementation, so a batch never
    wraps around the end.

    Args:
        size: K, the number of keys.
        dim: D, the embedding size.
        generator: for the random start-up keys.
        age_ordered: :meth:`snapshot` hands the keys over newest first
            (``@replace``, whose window is the newest keys); else in slot order.

    >>> queue = KeyQueue(4, 2)
    >>> queue.enqueue(torch.eye(2), torch.tensor([3, 5]), torch.tensor([0, 1]))
    >>> queue.labels.tolist(), int(queue.ptr)
    ([3, 5, -1, -1], 2)
    """

    def __init__(self, size: int, dim: int, generator: torch.Generator | None = None, age_ordered: bool = False):
        super().__init__()
        self.age_ordered = age_ordered
        keys = F.normalize(torch.randn(size, dim, generator=generator), dim=1)
        self.register_buffer("keys", keys)
        self.register_buffer("labels", torch.full((size,), -1, dtype=torch.long))
        self.register_buffer("indices", torch.full((size,), -1, dtype=torch.long))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))

    @property
    def size(self) -> int:
        return self.keys.shape[0]

    @torch.no_grad()
    def enqueue(self, keys: Tensor, labels: Tensor, indices: Tensor, sim: Tensor | None = None) -> None:
        """Replace the ``B`` oldest entries by ``keys [B, D]`` (and their
        ``labels [B]``, ``indices [B]``).  ``sim [B, K]``, the step's cosines
        to the :meth:`snapshot`'s keys, is for queues that keep keys by difficulty
        (:class:`~negatives.queues.retaining.RetainingQueue`); unused here."""
        b = keys.shape[0]
        if self.size % b != 0:
            raise ValueError(f"queue size {self.size} must be a multiple of the batch size {b}")
        # the slots ptr .. ptr + B - 1, computed on the queue's device: the
        # pointer is never read on the host (no sync inside a GPU step)
        slots = self.ptr + torch.arange(b, device=self.ptr.device)
        self.keys.index_copy_(0, slots, keys.detach().to(self.keys.dtype))
        self.labels.index_copy_(0, slots, labels.to(self.labels.dtype))
        self.indices.index_copy_(0, slots, indices.to(self.indices.dtype))
        self.ptr.add_(b).remainder_(self.size)

    def snapshot(self) -> tuple[Tensor, Tensor, Tensor]:
        """A copy of ``(keys [K, D], labels [K], indices [K])`` for one step: newest first if ``age_ordered``."""
        if not self.age_ordered:
            return self.keys.clone(), self.labels.clone(), self.indices.clone()
        order = self.newest_first()
        return self.keys.index_select(0, order), self.labels.index_select(0, order), self.indices.index_select(0, order)

    def ordered(self) -> tuple[Tensor, Tensor, Tensor]:
        """``(keys [K, D], labels [K], indices [K])`` oldest first."""
        order = (self.ptr + torch.arange(self.size, device=self.ptr.device)) % self.size
        return self.keys[order], self.labels[order], self.indices[order]

    def newest_first(self) -> Tensor:
        """``[K]`` positions of the keys, newest first."""
        return (self.ptr - 1 - torch.arange(self.size, device=self.keys.device)) % self.size
