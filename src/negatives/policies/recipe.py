"""What a policy name asks for: which candidates count (a policy), the loss
that turns them into a number, and MoCo's queue of negatives."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..losses.info_nce import info_nce
from ..queues.fifo import KeyQueue
from .base import All, NegativePolicy
from .replace import Replace

__all__ = ["Recipe"]


@dataclass(frozen=True)
class Recipe:
    """A run's negatives, chosen from its policy name by :func:`~negatives.policies.registry.parse_policy`.

    Args:
        name: the canonical policy name (the results folder name).
        policy: which candidates count (``keep[..]``, ``mochi[..]``, ...; ``all`` for the others).
        loss: ``(l_pos, sim, keep, temperature, synthetic) -> 0-d``
            (:func:`~negatives.losses.info_nce.info_nce`; ``debiased[..]`` and
            ``hard[..]``: :func:`~negatives.losses.reweighted.reweighted_nce`).
        queue: MoCo's queue, ``queue(size, dim, generator=) -> KeyQueue``
            (``retain-hard[..]``: a :class:`~negatives.queues.retaining.RetainingQueue`).
        check: raises :class:`~negatives.policies.grammar.PolicyError` when the
            loss or queue makes no sense for K candidates (None: nothing to check).

    >>> from negatives.policies import parse_policy
    >>> recipe = parse_policy("drop[99_100)@replace")
    >>> recipe.policy, recipe.loss.__name__, recipe.needs_queue
    (Replace('drop[99_100)@replace'), 'info_nce', True)
    """

    name: str
    policy: NegativePolicy = All()
    loss: Callable = info_nce
    queue: Callable[..., KeyQueue] = KeyQueue
    check: Callable[[int], None] | None = None

    @property
    def uses_labels(self) -> bool:
        """Whether the run reads class labels (an oracle)."""
        return self.policy.uses_labels

    @property
    def replace(self) -> bool:
        """Whether removed negatives are replaced by older ones (``@replace``)."""
        return isinstance(self.policy, Replace)

    @property
    def needs_queue(self) -> bool:
        """Whether the run works through MoCo's queue (``@replace``, ``retain-hard``)."""
        return self.replace or self.queue is not KeyQueue

    def validate(self, num_candidates: int, epochs: int | None = None) -> None:
        """Raise :class:`~negatives.policies.grammar.PolicyError` when the run makes no sense here."""
        self.policy.validate(num_candidates, epochs)
        if self.check is not None:
            self.check(num_candidates)

    def make_queue(
        self, queue_size: int, queue_extra: int, dim: int, generator: torch.Generator | None = None
    ) -> KeyQueue:
        """MoCo's queue: K keys, and ``queue_extra`` older ones for ``@replace``."""
        if self.replace and queue_extra <= 0:
            raise ValueError(
                f"policy {self.name!r} needs pretrain.queue_extra > 0 (the older negatives that stand "
                "in for removed ones)"
            )
        queue = self.queue(queue_size + (queue_extra if self.replace else 0), dim, generator=generator)
        queue.age_ordered = self.replace  # @replace's window: the K newest, handed over first
        return queue

    def __str__(self) -> str:
        return self.name
