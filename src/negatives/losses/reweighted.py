"""Reweighted contrastive losses: debiased (Chuang et al. 2020, arXiv:2007.00224)
and hard-negative weighted (Robinson et al. 2021, arXiv:2010.04592).

Both replace InfoNCE's negative term ``Σ_i e^{s_i/t}`` by an estimate ``Ng``
and keep its form::

    L = -log( e^{p/t} / (e^{p/t} + Ng) ),   p = q . k+,  s_i = q . n_i,  t = temperature

over the ``N`` negatives a query keeps (``keep``; ``N`` is counted per
query).  With class prior ``tau+`` (the chance that a "negative" shares the
query's class) and concentration ``beta >= 0``::

    w_i = e^{beta s_i / t} / ((1/N) Σ_j e^{beta s_j / t})          (importance weights, mean 1)
    Ng  = max( (Σ_i w_i e^{s_i/t} - tau+ N e^{p/t}) / (1 - tau+),  N e^{-1/t} )

``debiased[tau+]`` is ``beta = 0`` (every ``w_i = 1``); ``hard[beta,tau+]``
the general case.  The clamp at ``N e^{-1/t}`` (the smallest value the
negative term can take, every ``s_i = -1``) keeps the estimate positive when
the debiasing correction overshoots.  At ``tau+ = 0, beta = 0``, ``Ng`` is
InfoNCE's sum exactly.  As in the published code the weights carry gradient.
Every exponential is scaled by ``e^{-m}``, ``m`` the row's largest logit (or
``p/t``), so nothing overflows at small temperatures.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["reweighted_nce"]


def reweighted_nce(
    l_pos: Tensor,
    sim: Tensor,
    keep: Tensor | None,
    temperature: float,
    synthetic: Tensor | None = None,
    *,
    tau_plus: float = 0.0,
    beta: float = 0.0,
) -> Tensor:
    """Mean debiased (Chuang et al. 2020, arXiv:2007.00224) or hard-weighted (Robinson et al. 2021, arXiv:2010.04592) loss.

    ``-log(e^{p/t} / (e^{p/t} + Ng))`` over the batch (module docstring).

    Args:
        l_pos: ``[B]`` cosine of each query to its positive.
        sim: ``[B, K]`` cosine of each query to its candidate negatives.
        keep: ``[B, K]`` bool, True for a negative that counts (None: all);
            removed ones are absent from every sum and from ``N``.
        temperature: t.
        synthetic: ``[B, s]`` cosines of synthetic negatives, counted as kept ones (None: none).
        tau_plus: the class prior, in [0, 1).
        beta: the concentration, >= 0.

    Returns:
        0-d tensor.

    >>> l_pos, sim = torch.tensor([0.5]), torch.tensor([[0.2, -0.4]])
    >>> from negatives.losses.info_nce import info_nce
    >>> bool(torch.isclose(reweighted_nce(l_pos, sim, None, 0.5), info_nce(l_pos, sim, None, 0.5)))
    True
    """
    if not 0.0 <= tau_plus < 1.0:
        raise ValueError(f"tau_plus must lie in [0, 1), got {tau_plus}")
    if beta < 0:
        raise ValueError(f"beta must be >= 0, got {beta}")
    if synthetic is not None:
        keep = None if keep is None else torch.cat([keep, keep.new_ones(synthetic.shape)], dim=1)
        sim = torch.cat([sim, synthetic], dim=1)
    pos, neg = l_pos / temperature, sim / temperature  # [B], [B, K]
    if keep is not None:
        neg = neg.masked_fill(~keep, float("-inf"))  # a removed negative: e^{-inf} = 0 below
    with torch.no_grad():
        top = neg.amax(dim=1, keepdim=True)  # [B, 1] largest kept s/t
        if keep is not None:
            top = torch.where(torch.isfinite(top), top, 0.0)  # a row keeping none
        m = torch.maximum(top, pos.unsqueeze(1))  # [B, 1] the shift
    n = float(sim.shape[1]) if keep is None else keep.sum(dim=1).to(pos.dtype)  # N per query
    if beta == 0:
        negative = torch.exp(neg - m).sum(dim=1)  # Σ e^{s_j/t}, times e^{-m}
    else:
        x = beta * (neg - top)  # log w_j up to a constant: w_j <= 1, the top one 1
        w = torch.exp(x).sum(dim=1)
        if keep is not None:
            w = w.clamp(min=torch.finfo(sim.dtype).tiny)  # a row keeping none
        negative = torch.exp(x + neg - m).sum(dim=1) * n / w  # Σ w_j e^{s_j/t} / ((1/N) Σ_j w_j), e^{-m}
    m = m.squeeze(1)
    pos_e = torch.exp(pos - m)  # e^{p/t} e^{-m}
    if tau_plus:
        negative = (negative - tau_plus * n * pos_e) / (1.0 - tau_plus)
    floor = n * torch.exp(-1.0 / temperature - m)  # N e^{-1/t} e^{-m}
    return (m + torch.log(pos_e + torch.maximum(negative, floor)) - pos).mean()
