"""What every negative policy is: a call that answers, for one step, which
candidates count for each query (a :class:`Selection`), and the baseline
``all`` that keeps every one."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .candidates import Candidates

__all__ = ["Selection", "Mix", "NegativePolicy", "All"]


@dataclass(frozen=True)
class Mix:
    """Synthetic negatives given by their cosines to the queries (MoCHi's closed form).

    For each query ``b`` and synthetic negative ``t``::

        cos[b, t] = a[b, t] sim[b, i[b, t]] + c[b, t] sim[b, j[b, t]] + d[b, t] (q_b . q_b)

    exactly ``q . h`` for the detached vector ``h = a n_i + c n_j + d q`` (``n``
    the candidates' embeddings), with the same gradient: ``h`` to the query.

    Args:
        i, j: ``[B, s]`` int64 positions into ``sim``'s columns (the candidates).
        a, c, d: ``[B, s]`` float coefficients, detached constants.
    """

    i: Tensor
    j: Tensor
    a: Tensor
    c: Tensor
    d: Tensor

    def logits(self, q: Tensor, sim: Tensor) -> Tensor:
        """The synthetic negatives' cosines.

        Args:
            q: ``[B, D]`` the queries.
            sim: ``[B, K]`` query-candidate cosines whose gradient reaches the
                query only (``q @ keys.T`` with the keys detached).

        Returns:
            ``[B, s]``.  ``q . q`` is taken as ``q . q.detach()``, so its term
            contributes ``d q`` to the gradient, not ``2 d q``.

        >>> q = torch.tensor([[1.0, 0.0]])
        >>> mix = Mix(*(torch.tensor([[v]]) for v in (0, 1)), *(torch.tensor([[v]]) for v in (0.5, 0.25, 0.25)))
        >>> mix.logits(q, torch.tensor([[0.2, 0.6]]))           # 0.5 * 0.2 + 0.25 * 0.6 + 0.25 * 1
        tensor([[0.5000]])
        """
        qq = (q * q.detach()).sum(1, keepdim=True)  # [B, 1]
        s = self.i.shape[1]
        parents = sim.gather(1, torch.cat([self.i, self.j], dim=1))  # [B, 2s]: one gather, one scatter back
        return self.a * parents[:, :s] + self.c * parents[:, s:] + self.d * qq


@dataclass(frozen=True)
class Selection:
    """A policy's answer for one step: which candidates count, plus any synthetic negatives.

    Args:
        keep: ``[B, K]`` bool, True for a candidate that is one of the query's
            negatives; None: every candidate.
        mix: synthetic negatives (MoCHi's :class:`Mix`), or None.
        at: ``[B, n]`` the positions ``keep`` marks, when every query keeps n
            (a band): the loss then reads n columns of ``sim``, not K.

    >>> Selection(keep=torch.tensor([[True, False, True]])).kept_per_query(3)
    tensor(2.)
    """

    keep: Tensor | None = None
    mix: Mix | None = None
    at: Tensor | None = None

    def negatives(self, sim: Tensor) -> tuple[Tensor, Tensor | None]:
        """The cosines the loss reads and their mask: ``sim`` at :attr:`at` (all kept), else ``sim`` and ``keep``."""
        return (sim, self.keep) if self.at is None else (sim.gather(1, self.at), None)

    def synthetic(self, q: Tensor, sim: Tensor) -> Tensor | None:
        """``[B, s]`` cosines of the synthetic negatives to the queries ``q
        [B, D]``, from ``sim [B, K]`` (:meth:`Mix.logits`), or None."""
        return None if self.mix is None else self.mix.logits(q, sim)

    def kept_per_query(self, num_candidates: int) -> Tensor:
        """Mean count of negatives a query sees, synthetic ones included (a 0-d tensor: no host sync)."""
        if self.keep is None or self.at is not None:  # all, or n per query: no [B, K] count
            n = torch.tensor(float(num_candidates if self.keep is None else self.at.shape[1]))
        else:
            n = torch.count_nonzero(self.keep).float() / self.keep.shape[0]
        return n if self.mix is None else n + self.mix.i.shape[1]


class NegativePolicy:
    """Base class of every policy, and ``all``: keep every negative.

    A policy is called once per step, ``policy(sim, candidates, progress)``:

    Args:
        sim: ``[B, K]`` cosine of each query to each candidate negative (its
            difficulty), detached.
        candidates: :class:`~negatives.policies.candidates.Candidates`, what
            is known about the queries and their candidates (labels, dataset
            indices, embeddings); most policies ignore it.
        progress: the fraction of training done, in ``[0, 1]``.

    Returns:
        :class:`Selection`.

    It may also override :meth:`validate` (called before any job starts),
    :meth:`start` (told the run's length once) and :meth:`eligible` (which
    older negatives may stand in for removed ones, ``@replace``).
    """

    #: the policy's canonical string (its results folder name)
    name: str = "all"
    #: True when the policy reads class labels (an oracle, not self-supervised)
    uses_labels: bool = False

    def __call__(self, sim: Tensor, candidates: Candidates, progress: float = 0.0) -> Selection:
        return Selection()

    def validate(self, num_candidates: int, epochs: int | None = None) -> None:
        """Raise :class:`~negatives.policies.grammar.PolicyError` if the policy
        is empty or meaningless for ``num_candidates`` negatives and ``epochs``."""

    def start(self, epochs: int, num_candidates: int) -> None:
        """Told once, before the first step, the run's epochs and each query's candidates."""

    def eligible(self, candidates: Candidates) -> Tensor | None:
        """``[B, E]`` or ``[E]`` bool: which older candidates may stand in for
        removed ones (``@replace``); None: every one."""
        return None

    def __repr__(self) -> str:  # pragma: no cover - cosmetic
        return f"{type(self).__name__}({self.name!r})"

    def __str__(self) -> str:
        """The canonical name, which parses back to this policy."""
        return self.name


class All(NegativePolicy):
    """The baseline: every candidate negative is used."""

    name = "all"
