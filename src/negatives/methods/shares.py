"""Which negatives the loss learns from: the gradient's share by difficulty, measured in the real step.

Cai et al. 2020 (arXiv:2010.06682) argue from accuracy after training that the
hardest 5% of negatives drive learning.  In InfoNCE the gradient a query's
loss sends to the cosine ``s_i`` of its negative ``i`` is proportional to
that negative's softmax weight, so the argument can be watched directly.  For
each measured query, with ``w_i = |dL/ds_i|`` over its M candidates (0 for a
removed one) and ``w_t`` over MoCHi's synthetic negatives (Kalantidis et al.
2020, arXiv:2010.01028)::

    share(G) = Σ_{i in G} w_i / (Σ_i w_i + Σ_t w_t)

for ``G`` the hardest 0.1, 1, 5 and 10 % and the easiest 50 % of the M
candidates, ranked by cosine as the bands rank them
(:func:`~negatives.policies.bands.band_ranks`, so runs of different policies
share one scale), and for the synthetic negatives.  The gradients are the
step's own, caught by hooks on the loss's inputs during its backward pass:
any loss (``debiased``, ``hard``: their own weights) and any policy.  In
``@replace`` mode the candidates are all K + E keys of the queue.

Only the first ``queries`` queries of each step are measured (a random
sample: the batch is shuffled) -- ranking a whole ``[B, K]`` matrix twice a
step would cost more than the measurement is worth; the sums stay on the
device (no host sync) until the trainer reads them once per epoch.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..policies.bands import band_ranks
from ..ranking import top_k

__all__ = ["GROUPS", "GradientShares", "group_positions", "shares"]

#: the shares measured, in their order
GROUPS = ("hardest_0.1", "hardest_1", "hardest_5", "hardest_10", "easiest_50", "synthetic")
_HARDEST = (0.1, 1, 5, 10)


def group_positions(sim: Tensor) -> list[Tensor]:
    """The hardest 0.1, 1, 5, 10 % and the easiest 50 % of each row, as the bands rank them.

    Args:
        sim: ``[R, M]`` cosines of R queries to their M candidates.

    Returns:
        five ``[R, n]`` int64 position tensors, ``n`` the band's count of
        :func:`~negatives.policies.bands.band_ranks` (``keep[99.9_100)`` ...
        ``keep[90_100)``, ``keep[0_50)``).

    >>> sim = torch.arange(20.0).flip(0).unsqueeze(0)       # candidate 0 the hardest
    >>> [sorted(p[0].tolist()) for p in group_positions(sim)]   # 0, 0, 1, 2 and 10 of 20
    [[], [], [0], [0, 1], [10, 11, 12, 13, 14, 15, 16, 17, 18, 19]]
    """
    m = sim.shape[1]
    counts = [hi - lo for lo, hi in (band_ranks(m, 100 - p, 100) for p in _HARDEST)]
    hardest = top_k(sim, counts[-1])  # the hardest 10%; the narrower bands are its hardest
    values = sim.gather(1, hardest)
    out = [hardest if n == counts[-1] else hardest.gather(1, top_k(values, n)) for n in counts]
    lo, hi = band_ranks(m, 0, 50)
    return [*out, top_k(sim, hi - lo, largest=False)]


def shares(weights: Tensor, groups: list[Tensor], synthetic: Tensor | None = None) -> Tensor:
    """Each query's share of its negatives' gradient weight carried by each group.

    Args:
        weights: ``[R, M]`` ``|dL/ds_i|`` of each candidate (0 if removed).
        groups: the positions of :func:`group_positions`, ``[R, n]`` each.
        synthetic: ``[R, s]`` ``|dL/dt|`` of synthetic negatives (None: none).

    Returns:
        ``[R, 6]``: the shares of :data:`GROUPS` (0 for a query whose loss sends no gradient to any negative).

    >>> w = torch.tensor([[1.0, 3.0, 0.0, 4.0]], dtype=torch.float64)
    >>> shares(w, [torch.tensor([[3]]), torch.tensor([[3, 1]])], torch.tensor([[2.0]], dtype=torch.float64)).tolist()
    [[0.4, 0.7, 0.2]]
    """
    extra = weights.new_zeros(weights.shape[0]) if synthetic is None else synthetic.sum(1)
    total = weights.sum(1) + extra
    parts = torch.stack([*(weights.gather(1, g).sum(1) for g in groups), extra], dim=1)
    return parts / total.clamp_min(torch.finfo(total.dtype).tiny).unsqueeze(1)


class GradientShares:
    """Measures :func:`shares` in a step's backward pass, for the first ``queries`` queries (0: off).

    Called by a method's ``forward`` on what it hands to its loss
    (:meth:`watch`); the answer, ``{"shares": [7] tensor}`` on the device, is
    filled during the backward pass: the shares of :data:`GROUPS` summed over
    the measured queries, and their count.
    """

    def __init__(self, queries: int = 0):
        self.queries = queries

    def watch(self, sim: Tensor, at: Tensor | None, neg: Tensor, synthetic: Tensor | None):
        """``(neg, synthetic, stats)``: the loss's inputs to use (hooked views of
        ``neg``, ``synthetic``) and ``{"shares": the [7] sums}``, or the inputs
        as they are and ``{}`` when nothing is measured (off, no gradient).

        Args:
            sim: ``[B, M]`` the step's cosines to its candidates (the ranking).
            at: ``[B, n]`` the candidates ``neg``'s columns are (a band), or None: ``neg`` is ``[B, M]``.
            neg: what the loss reads of the candidates; synthetic: ``[B, s]`` or None.
        """
        r = min(self.queries, sim.shape[0])
        if r == 0 or not neg.requires_grad:
            return neg, synthetic, {}
        sums = torch.zeros(len(GROUPS) + 1, device=sim.device)
        caught: dict[str, Tensor] = {}
        wanted = 1 if synthetic is None else 2

        def catch(name: str):
            def hook(grad: Tensor) -> None:
                caught[name] = grad[:r].detach().abs().float()
                if len(caught) == wanted:  # both of the loss's inputs have their gradient
                    w = caught["neg"]
                    if at is not None:  # a band's columns back to their candidates
                        w = torch.zeros(r, sim.shape[1], device=w.device).scatter_(1, at[:r], w)
                    s = shares(w, group_positions(sim.detach()[:r].float()), caught.get("synthetic"))
                    sums[:-1].add_(s.sum(0))
                    sums[-1].add_(r)

            return hook

        neg = neg.view_as(neg)  # its own node: MoCHi's mixes read sim, not this
        neg.register_hook(catch("neg"))
        if synthetic is not None:
            synthetic = synthetic.view_as(synthetic)
            synthetic.register_hook(catch("synthetic"))
        return neg, synthetic, {"shares": sums}
