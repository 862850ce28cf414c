"""InfoNCE (van den Oord et al. 2018, arXiv:1807.03748), the loss of MoCo
(He et al. 2020, arXiv:1911.05722) and SimCLR (Chen et al. 2020,
arXiv:2002.05709), over the negatives a query keeps and any synthetic ones
(MoCHi, Kalantidis et al. 2020, arXiv:2010.01028)::

    L = -log( e^{l_pos/τ} / (e^{l_pos/τ} + Σ_{j kept} e^{sim_j/τ} + Σ_t e^{synthetic_t/τ}) )

As in MoCo's ``builder.py``: the logits ``[B, 1 + K]`` with the positive in
column 0, and the cross-entropy with label 0; a removed negative's logit is
pushed to the lowest float (``-inf`` once divided by τ < 1), so its
``e^{logit}`` is exactly 0: it is absent from the denominator and gets no gradient.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["info_nce"]


def info_nce(
    l_pos: Tensor, sim: Tensor, keep: Tensor | None, temperature: float, synthetic: Tensor | None = None
) -> Tensor:
    """Mean InfoNCE over the batch (van den Oord et al. 2018, arXiv:1807.03748).

    Args:
        l_pos: ``[B]`` cosine of each query to its positive.
        sim: ``[B, K]`` cosine of each query to its candidate negatives.
        keep: ``[B, K]`` bool, True for a negative that counts (None: all).
        temperature: τ.
        synthetic: ``[B, s]`` cosines of synthetic negatives, all counted (None: none).

    Returns:
        0-d tensor.

    >>> l_pos, sim = torch.tensor([1.0]), torch.tensor([[1.0, 0.0]])
    >>> float(info_nce(l_pos, sim, torch.tensor([[True, False]]), 1.0))      # log 2
    0.6931471824645996
    """
    negatives = sim  # [B, K]
    if keep is not None:  # sim - max · removed, one pass (masked_fill's bool kernel is a scalar loop on CPU)
        negatives = torch.sub(sim, (~keep).view(torch.uint8), alpha=torch.finfo(sim.dtype).max)
    logits = torch.cat([l_pos.unsqueeze(1), negatives, *([] if synthetic is None else [synthetic])], dim=1)
    labels = torch.zeros(l_pos.shape[0], dtype=torch.long, device=l_pos.device)  # the positive is column 0
    return F.cross_entropy(logits / temperature, labels)
