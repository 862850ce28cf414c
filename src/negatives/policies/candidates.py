"""What a policy knows about one step's queries and their candidate negatives."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .grammar import PolicyError

__all__ = ["Candidates"]


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
    query_rows:   ``(start, total)``: the queries are rows ``start ..
                  start + B - 1`` of the step's ``total`` queries (a process's
                  share of a run across processes); ``None``: all of them.  A
                  policy that draws random numbers per query draws them for
                  all ``total`` and keeps its rows, so its draws do not depend
                  on how the queries are spread over processes.

    Every field is optional; a policy that needs one that is missing raises.
    """

    labels: Tensor | None = None
    indices: Tensor | None = None
    keys: Tensor | None = None
    query_labels: Tensor | None = None
    queries: Tensor | None = None
    pool_index: Tensor | None = None
    query_rows: tuple[int, int] | None = None

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
        return Candidates(cut(self.labels), cut(self.indices), cut(self.keys), self.query_labels, self.queries,
                          query_rows=self.query_rows)

    def embeddings(self, index: Tensor) -> Tensor:
        """Embeddings of the candidates ``index [B, n]`` of each query: ``[B, n, D]``."""
        if self.keys is None:
            raise PolicyError("this policy needs the negatives' embeddings, which this step does not have")
        rows = index if self.pool_index is None else self.pool_index.gather(1, index)
        if rows.device.type != "cpu":
            return self.keys[rows]                  # one call (a strided index would be copied to flatten it)
        # index_select on flattened rows: several times faster on CPU than keys[rows]
        return self.keys.index_select(0, rows.reshape(-1)).view(*rows.shape, self.keys.shape[1])
