"""The debiased and hard-negative losses as their authors' training code
computes them (SimCLR's batch of 2B views, no mask), written out from their
formulas so the library's loss can be compared with them on identical tensors.

Chuang et al. 2020 (arXiv:2007.00224, github.com/chingyaoc/DCL ``main.py``)
and Robinson et al. 2021 (arXiv:2010.04592, github.com/joshr17/HCL
``image/main.py``, ``criterion``)::

    neg = exp(z z^T / t) at every view but i and its twin        [2B, 2B-2]
    pos = exp(z_1 . z_2 / t), twice                              [2B]
    imp = exp(beta log neg)                                      (HCL)
    Ng  = clamp((-tau+ N pos + sum(imp neg) / mean(imp)) / (1 - tau+), min=N e^{-1/t}),  N = 2B - 2
    L   = mean(-log(pos / (pos + Ng)))
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def negative_mask(batch: int) -> Tensor:
    """``[2B, 2B]`` bool: False at each view and its twin (both papers' ``get_negative_mask``)."""
    mask = torch.ones(batch, 2 * batch, dtype=torch.bool)
    rows = torch.arange(batch)
    mask[rows, rows] = False
    mask[rows, rows + batch] = False
    return torch.cat([mask, mask])


def _scores(out_1: Tensor, out_2: Tensor, t: float) -> tuple[Tensor, Tensor]:
    batch = out_1.shape[0]
    out = torch.cat([out_1, out_2])
    neg = torch.exp(out @ out.T / t).masked_select(negative_mask(batch)).view(2 * batch, -1)
    pos = torch.exp((out_1 * out_2).sum(-1) / t)
    return torch.cat([pos, pos]), neg


def dcl_loss(out_1: Tensor, out_2: Tensor, tau_plus: float, t: float, debiased: bool = True) -> Tensor:
    """Chuang et al.'s training loss (DCL ``main.py``) of the unit embeddings ``out_1, out_2 [B, D]``."""
    pos, neg = _scores(out_1, out_2, t)
    if debiased:
        n = neg.shape[1]
        ng = ((-tau_plus * n * pos + neg.sum(-1)) / (1 - tau_plus)).clamp(min=n * math.e ** (-1 / t))
    else:
        ng = neg.sum(-1)
    return (-torch.log(pos / (pos + ng))).mean()


def hcl_loss(out_1: Tensor, out_2: Tensor, tau_plus: float, beta: float, t: float) -> Tensor:
    """Robinson et al.'s ``criterion`` with ``estimator='hard'`` (HCL ``image/main.py``)."""
    pos, neg = _scores(out_1, out_2, t)
    return _hard(pos, neg, tau_plus, beta, t).mean()


def _hard(pos: Tensor, neg: Tensor, tau_plus: float, beta: float, t: float) -> Tensor:
    """``-log(pos / (pos + Ng))`` per row of ``pos [R]``, ``neg [R, N]`` (``e^{s/t}``)."""
    n = neg.shape[-1]
    imp = (beta * neg.log()).exp()
    reweight_neg = (imp * neg).sum(-1) / imp.mean(-1)
    ng = ((-tau_plus * n * pos + reweight_neg) / (1 - tau_plus)).clamp(min=n * math.e ** (-1 / t))
    return -torch.log(pos / (pos + ng))


def hcl_loss_kept(l_pos: Tensor, sim: Tensor, keep: Tensor, tau_plus: float, beta: float, t: float) -> Tensor:
    """The same formula one query at a time over the negatives it keeps
    (``N`` its own count): what the authors' code computes for a batch whose
    negatives are those.  Every row must keep one at least."""
    rows = [
        _hard(torch.exp(l_pos[b] / t), torch.exp(sim[b][keep[b]] / t), tau_plus, beta, t) for b in range(sim.shape[0])
    ]
    return torch.stack(rows).mean()
