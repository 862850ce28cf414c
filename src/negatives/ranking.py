"""Ranking a query's candidates by difficulty: the exact count of a percent,
and the partial selection of the hardest or easiest (no sort)."""

from __future__ import annotations

import functools
from fractions import Fraction

import numpy as np
import torch
from torch import Tensor

__all__ = ["exact", "percent_of", "top_k"]


def exact(x) -> Fraction:
    """A number as the exact rational it was written as.

    An int or :class:`~fractions.Fraction` as it is, a float as its shortest
    decimal (``99.9 -> 999/10``, never the binary ``99.900000000000005684...``),
    so counts are computed in exact arithmetic.

    >>> exact(99.9), exact(3)
    (Fraction(999, 10), Fraction(3, 1))
    """
    if isinstance(x, (int, Fraction)):
        return Fraction(x)
    return _decimal(float(x))


@functools.lru_cache(maxsize=4096)
def _decimal(x: float) -> Fraction:
    return Fraction(repr(x))


def percent_of(k: int, pct) -> int:
    """``round(k pct / 100)``, half up, in exact arithmetic on ``pct`` as written.

    >>> percent_of(4096, 0.1), percent_of(1000, 99.95)      # 4.096 -> 4; 999.5 -> 1000
    (4, 1000)
    """
    p = exact(pct)
    return (2 * k * p.numerator + 100 * p.denominator) // (200 * p.denominator)


def top_k(x: Tensor, k: int, largest: bool = True) -> Tensor:
    """Positions of the ``k`` largest (or smallest) entries of every row, in no order.

    Args:
        x: ``[B, K]`` scores.
        k: how many per row (exactly ``k`` whatever the ties).
        largest: False for the smallest.

    Returns:
        ``[B, k]`` int64 positions (an unsorted ``topk``).

    On CPU (float32/64) this is numpy's ``argpartition``, an introselect that
    numpy runs with SIMD: cheaper than ``torch.topk`` on an Intel Xeon with
    AVX-512 (``benchmarks/RESULTS.md``), about as fast on an AMD EPYC; it
    stays because the order it lists the positions in is part of a run (MoCHi
    draws its pairs by position among the N hardest), except for the few
    largest (``k <= 4``), where ``torch.topk`` is the cheaper one.  Elsewhere (GPU, ``meta``, bf16)
    it is :func:`torch.topk`, which never syncs.  The two may break ties
    differently, never the count.

    >>> sorted(top_k(torch.tensor([[0.1, 0.9, 0.5, 0.7]]), 2)[0].tolist())
    [1, 3]
    """
    n = x.shape[1]
    if x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64) and 0 < k < n and not (largest and k <= 4):
        kth = n - k if largest else k - 1
        part = np.argpartition(x.detach().numpy(), kth, axis=1)
        pick = part[:, n - k :] if largest else part[:, :k]
        return torch.from_numpy(np.ascontiguousarray(pick, dtype=np.int64))
    return torch.topk(x, k, dim=1, largest=largest, sorted=False).indices
