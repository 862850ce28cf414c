"""The cheap forms a :class:`~negatives.policies.selection.Selection` is stored
in besides a mask: synthetic negatives given by their cosines (:class:`Mix`,
MoCHi's), and a few candidates exchanged one for one (:class:`Swap`)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

__all__ = ["Mix", "Swap"]


@dataclass(frozen=True)
class Mix:
    """Synthetic negatives given by their cosines, mixed from the candidates' (MoCHi's cheap form).

    Synthetic negatives given by their cosines to the query, mixed from the
    candidates' cosines (no synthetic embedding is built)::

        cos[b, t] = a[b, t] sim[b, i[b, t]] + c[b, t] sim[b, j[b, t]] + d[b, t] (q_b . q_b)

    i, j:    ``[B, s]`` int64 positions into ``sim``'s columns (the candidates);
    a, c, d: ``[B, s]`` float coefficients, detached constants;
    ij:      optional ``[B, 2s]``, ``i`` and ``j`` side by side, when the maker
             has them so (``i``, ``j`` its views): :meth:`parents` without a copy.

    This is exactly ``q . h`` for the detached vector ``h = a n_i + c n_j + d q``
    (``n`` the candidates' embeddings; MoCHi's coefficients make it unit
    norm), and :meth:`logits` gives it the same gradient: ``h`` to the query.
    """

    i: Tensor
    j: Tensor
    a: Tensor
    c: Tensor
    d: Tensor
    ij: Tensor | None = field(default=None, repr=False, compare=False)

    def logits(self, q: Tensor, sim: Tensor) -> Tensor:
        """``q [B, D]`` queries, ``sim [B, K]`` query-candidate cosines whose
        gradient reaches the query only (``q @ keys.T``, keys detached) ->
        ``[B, s]``.  The gradient to ``q`` is ``a n_i + c n_j + d q``: through
        ``sim`` for the candidates, and ``q . q`` is taken as
        ``q . q.detach()`` so that its term contributes ``d q``, not ``2 d q``.
        """
        qq = (q * q.detach()).sum(1, keepdim=True)                               # [B, 1]
        # one gather of both parents (one scatter in the backward pass)
        return self.combine(sim.gather(1, self.parents()), qq)

    def parents(self) -> Tensor:
        """``[B, 2s]``: the positions ``i``, then ``j``."""
        return torch.cat([self.i, self.j], dim=1) if self.ij is None else self.ij

    def combine(self, parent_cos: Tensor, qq: Tensor) -> Tensor:
        """``a sim_i + c sim_j + d (q . q)`` from the parents' cosines
        ``[B, 2s]`` (at :meth:`parents`) and ``qq [B, 1]`` -> ``[B, s]``."""
        s = self.i.shape[1]
        return self.a * parent_cos[:, :s] + self.c * parent_cos[:, s:] + self.d * qq


@dataclass(frozen=True)
class Swap:
    """A few candidates of each query exchanged one for one (a selection's cheap form).

    The cheap form of a selection that removes at most ``n`` per query (a narrow band and a
    class relation), and, in replace mode, of the stand-ins put in their place.

    at:    ``[B, n]`` int64, distinct positions among the first ``width``
           candidates (all of them when ``width`` is None), each of whose own
           term is taken out;
    to:    ``[B, n]`` int64, the candidate counted in each one's place: its
           own position to keep it, a stand-in's (replace mode: an older
           candidate, past ``width``), and its own position when ``valid`` is
           False;
    valid: ``[B, n]`` bool, False: the slot counts nothing (removed, no
           stand-in).

    The ``to`` positions of a row are distinct, and no stand-in is an ``at``
    position, so the candidates a query sees are the first ``width`` minus
    ``at`` plus the valid ``to``: exactly :meth:`Selection.mask`.  The loss
    reads ``[B, n]`` here instead of a ``[B, K]`` mask
    (:class:`negatives.losses.kernel.KeptExpSum`).
    """

    at: Tensor
    to: Tensor
    valid: Tensor
