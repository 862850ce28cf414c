"""The interface every negative policy has, the baseline that keeps every
negative, and ``@replace``, the mode that replaces removed negatives by older ones."""

from __future__ import annotations

import torch
from torch import Tensor

from ..queue import KeyQueue
from .candidates import Candidates
from .grammar import PolicyError
from .selection import Selection

__all__ = ["NegativePolicy", "All", "Replace"]


class NegativePolicy:
    """Base class: keep every negative.

    Besides ``__call__``, a policy may override:

    * :meth:`validate` -- raise :class:`PolicyError` when the policy makes no
      sense for ``num_candidates`` negatives or ``epochs`` of training (called
      by the config check before any job starts, and by the trainer);
    * :meth:`start` -- told the length of training once, before the first step;
    * :meth:`eligible` -- in ``replace`` mode, which older negatives may stand
      in for removed ones (default: any);
    * ``loss`` -- a callable with :func:`negatives.losses.info_nce.info_nce`'s
      signature, for policies that change the loss rather than the negatives.
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
    #: True when the policy works through MoCo's queue of older negatives
    #: (replace mode, ``retain-hard``): a method without one cannot run it
    needs_queue: bool = False

    def __call__(self, sim: Tensor, candidates: Candidates, progress: float = 0.0) -> Selection:
        return Selection.every()

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

    def __str__(self) -> str:
        """The canonical name, which parses back to this policy."""
        return self.name


class All(NegativePolicy):
    """The baseline: every candidate negative is used."""

    name = "all"


class Replace(NegativePolicy):
    """``<drop policy>@replace``: the same removal, in ``replace`` mode.

    The queue is longer than K (by ``queue_extra``); for each query the
    policy is applied to the K newest negatives, and each removed one is
    replaced by the next older negative that the policy allows to stand in
    (:meth:`NegativePolicy.eligible`; older negatives are not re-ranked), so
    the query sees exactly K.  See :func:`negatives.policies.selection.select`.
    """

    mode = "replace"
    needs_queue = True

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
