"""What a policy knows about one step's queries and their candidate negatives."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

__all__ = ["Candidates"]


@dataclass(frozen=True)
class Candidates:
    """What is known about a step's queries and their candidate negatives.

    The candidates are rows of a *pool* of ``M`` embedded views (MoCo: the
    queue's slots; SimCLR: the batch's views).  Every field is optional; a
    policy that needs one that is missing raises.

    Args:
        labels: ``[M]`` int64 class label of each pool row (-1 when unknown).
        indices: ``[M]`` int64 dataset index of each pool row (-1 when unknown).
        keys: ``[M, D]`` the pool's embeddings (detached, unit norm).
        query_labels: ``[B]`` int64 class label of each query (-1 when unknown).
        queries: ``[B, D]`` the query embeddings (detached, unit norm).
        pool_index: ``[B, K]`` int64, the pool row of candidate ``j`` of query
            ``i`` (SimCLR: each view's candidates are the other views); None:
            every query's candidates are the whole pool in order (MoCo).
        age_ordered: the pool rows are newest first (MoCo's queue for
            ``@replace``, :meth:`~negatives.queues.fifo.KeyQueue.snapshot`).
        query_rows: ``(start, total)``: the queries are rows ``start ..
            start + B - 1`` of the step's ``total`` (a process's share of a
            run across processes; None: all).  A policy that draws random
            numbers per query draws them for all ``total`` and keeps its rows,
            so its draws do not depend on how the queries are spread.
    """

    labels: Tensor | None = None
    indices: Tensor | None = None
    keys: Tensor | None = None
    query_labels: Tensor | None = None
    queries: Tensor | None = None
    pool_index: Tensor | None = None
    age_ordered: bool = False
    query_rows: tuple[int, int] | None = None
