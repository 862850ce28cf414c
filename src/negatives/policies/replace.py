"""``<drop policy>@replace``: the same removal, each removed negative replaced
by an older one, so every query sees exactly K (Cai et al. 2020,
arXiv:2010.06682: "we replace them with slightly older negatives")."""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor

from .base import NegativePolicy, Selection
from .candidates import Candidates
from .grammar import PolicyError

__all__ = ["Replace", "replace_removed", "part"]


def part(candidates: Candidates, rows: slice) -> Candidates:
    """The candidates at the pool rows ``rows`` (views)."""
    pick = lambda t: None if t is None else t[rows]  # noqa: E731
    return dataclasses.replace(
        candidates, labels=pick(candidates.labels), indices=pick(candidates.indices), keys=pick(candidates.keys)
    )


def replace_removed(keep: Tensor, eligible: Tensor | int) -> Tensor:
    """Which older negatives stand in for the removed ones.

    Args:
        keep: ``[B, K]`` bool, the policy's choice among the K newest negatives.
        eligible: ``[B, E]`` bool, the E older negatives, newest first, that
            may stand in; or E, when every one of them may.

    Returns:
        ``[B, E]`` bool: for each query, the first ``K - kept`` eligible older
        negatives.  When fewer are eligible, all of them are used and the
        query sees fewer than K (the trainer logs the count; make
        ``queue_extra`` larger to avoid it).

    >>> replace_removed(torch.tensor([[True, False, False]]), torch.tensor([[True, False, True, True]]))
    tensor([[ True, False,  True, False]])
    """
    # int32 counts: a bool sum accumulates in int64, 3-4x slower on CPU
    missing = keep.shape[1] - keep.sum(1, keepdim=True, dtype=torch.int32)
    if isinstance(eligible, int):  # the first ``missing`` of them
        return torch.arange(1, eligible + 1, dtype=torch.int32, device=keep.device) <= missing
    return eligible & (eligible.cumsum(1, dtype=torch.int32) <= missing)


class Replace(NegativePolicy):
    """A removal among the K newest negatives, each removed one replaced by an older one (Cai et al. 2020, arXiv:2010.06682).

    ``<drop policy>@replace``: the removal of ``inner`` among the K newest
    negatives, each removed one replaced by the next older one it allows.
    MoCo's queue holds K + E keys (``pretrain.queue_extra`` = E) and hands
    them over newest first (its recipe builds it ``age_ordered``); ``inner``
    sees the first K, and the older ones stand in, newest first, where
    ``inner.eligible`` allows (older negatives are not re-ranked).

    Args:
        inner: a removal policy (``drop...``).

    Called with ``sim [B, K + E]`` whose columns are the candidates newest
    first (``candidates.age_ordered``), it answers a ``[B, K + E]`` mask;
    :meth:`start` tells it K.

    >>> from negatives.policies.bands import Band
    >>> policy = Replace(Band("drop", 50, 100)); policy.start(1, num_candidates=2)
    >>> sim = torch.tensor([[0.2, 0.5, 0.1, 0.9]])              # newest first: the K = 2 newest, then 2 older
    >>> policy(sim, Candidates(age_ordered=True)).keep
    tensor([[ True, False,  True, False]])
    """

    def __init__(self, inner: NegativePolicy):
        if isinstance(inner, Replace) or not inner.name.startswith("drop"):
            raise PolicyError(f"'@replace' applies to a removal policy (drop...), got {inner.name!r}")
        self.inner = inner
        self.name = f"{inner.name}@replace"
        self.uses_labels = inner.uses_labels
        self.window: int | None = None

    def start(self, epochs: int, num_candidates: int) -> None:
        self.window = num_candidates
        self.inner.start(epochs, num_candidates)

    def validate(self, num_candidates: int, epochs: int | None = None) -> None:
        self.inner.validate(num_candidates, epochs)

    def eligible(self, candidates: Candidates) -> Tensor | None:
        return self.inner.eligible(candidates)

    def __call__(self, sim: Tensor, candidates: Candidates, progress: float = 0.0) -> Selection:
        if self.window is None or not candidates.age_ordered:
            raise PolicyError(f"policy {self.name!r} needs MoCo's queue newest first and start(epochs, K) first")
        k = self.window
        chosen = self.inner(sim[:, :k], part(candidates, slice(0, k)), progress)  # the K newest
        keep = torch.ones_like(sim[:, :k], dtype=torch.bool) if chosen.keep is None else chosen.keep
        eligible = self.inner.eligible(part(candidates, slice(k, None)))  # [B, E], [E] or None: any
        older = sim.shape[1] - k if eligible is None else eligible.expand(sim.shape[0], -1)
        stand_in = replace_removed(keep, older)  # [B, E]
        return Selection(keep=torch.cat([keep, stand_in], dim=1), mix=chosen.mix)
