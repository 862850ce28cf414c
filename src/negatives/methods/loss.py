"""From a policy's selection to the loss: the glue every method shares.

:class:`ContrastiveLoss` is what a method calls once per step,
``loss = criterion(l_pos, sim, selection, q)``.  What it computes is
:meth:`ContrastiveLoss.reference`: each query's InfoNCE (or the policy's own
loss) over the candidates its selection keeps, plus its synthetic negatives.
``__call__`` computes the same value without building the mask, from the
form the selection is stored in (tests/test_moco.py holds them equal).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..losses.info_nce import fused_info_nce, info_nce
from ..losses.kernel import Terms
from ..policies.selection import Selection

__all__ = ["ContrastiveLoss", "full_precision"]


def full_precision(t: Tensor) -> Tensor:
    """A tensor in float32 when it is half precision, else unchanged (no copy).

    ``t`` in float32 when it is bf16 or fp16 (under an autocast), else
    ``t`` itself (float32 and float64 untouched, no copy): the embeddings,
    cosines and loss are never computed in a half-precision type."""
    return t.float() if t.dtype in (torch.bfloat16, torch.float16) else t


class ContrastiveLoss:
    """The contrastive loss of one step under a policy's selection.

    Args:
        temperature: τ.
        loss: the policy's own loss, ``(l_pos [B], neg [B, n], keep [B, n] or
            None, τ) -> 0-d`` (``NegativePolicy.loss``); None: InfoNCE.

    Call with ``l_pos [B]`` (query-positive cosines), ``sim [B, K]``
    (query-candidate cosines, with gradient), the :class:`Selection` and the
    queries ``q [B, D]``; ``synthetic_sim [B, K]``, the same cosines with
    gradient to the query only, is for methods whose candidates get gradient
    too (SimCLR): synthetic negatives are constants.  Returns a 0-d tensor.

    >>> criterion = ContrastiveLoss(0.2)
    >>> q = torch.nn.functional.normalize(torch.randn(2, 4), dim=1)
    >>> keys = torch.nn.functional.normalize(torch.randn(3, 4), dim=1)
    >>> l_pos, sim = (q * q.flip(0)).sum(1), q @ keys.T
    >>> sel = Selection.at(torch.tensor([[0, 2], [1, 2]]))
    >>> bool(torch.isclose(criterion(l_pos, sim, sel, q), criterion.reference(l_pos, sim, sel, q)))
    True
    """

    def __init__(self, temperature: float, loss=None):
        self.temperature = temperature
        self.loss = loss

    def reference(self, l_pos: Tensor, sim: Tensor, selection: Selection, q: Tensor,
                  synthetic_sim: Tensor | None = None) -> Tensor:
        """The loss in its plain form: a mask over ``sim`` and the synthetic
        negatives' cosines appended, then the plain InfoNCE
        (:func:`negatives.losses.info_nce.info_nce`) or the policy's loss."""
        keep = selection.mask(sim.shape)                                       # [B, K] or None: all
        synthetic = selection.synthetic(q, sim if synthetic_sim is None else synthetic_sim)   # [B, s] or None
        if synthetic is not None:
            keep = torch.ones_like(sim, dtype=torch.bool) if keep is None else keep
            sim = torch.cat([sim, synthetic], dim=1)                           # [B, K + s]
            keep = torch.cat([keep, keep.new_ones(synthetic.shape)], dim=1)
        return (self.loss or info_nce)(l_pos, sim, keep, self.temperature)

    def __call__(self, l_pos: Tensor, sim: Tensor, selection: Selection, q: Tensor,
                 synthetic_sim: Tensor | None = None) -> Tensor:
        if self.loss is None and selection.fuses(own_synthetic_sim=synthetic_sim is not None):
            # InfoNCE reads the selection as it is stored: a mask, the removed
            # positions, the first `width` columns, MoCHi's mix read from sim
            # itself, a swap -- never a [B, K] mask it does not have
            return fused_info_nce(l_pos, sim, self.temperature, selection.terms(q))
        neg, keep, synthetic = selection.dense(sim, q, synthetic_sim)          # [B, n], [B, n], [B, s]
        if self.loss is None:
            # the synthetic negatives summed apart: no [B, n + s] copy
            return fused_info_nce(l_pos, neg, self.temperature, Terms(keep=keep, extra=synthetic))
        if synthetic is not None:
            neg = torch.cat([neg, synthetic], dim=1)
            if keep is not None:
                keep = torch.cat([keep, keep.new_ones(synthetic.shape)], dim=1)
        return self.loss(l_pos, neg, keep, self.temperature)
