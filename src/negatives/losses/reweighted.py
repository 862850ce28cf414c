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


def reweighted_nce(l_pos: Tensor, sim: Tensor, keep: Tensor | None, temperature: float,
                   synthetic: Tensor | None = None, *, tau_plus: float = 0.0, beta: float = 0.0) -> Tensor:
    """Mean over the batch of ``-log(e^{p/t} / (e^{p/t} + Ng))`` (module docstring).

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
    kept = torch.ones_like(sim, dtype=torch.bool) if keep is None else keep           # [B, K]
    pos, neg = l_pos / temperature, sim / temperature                                # [B], [B, K]
    with torch.no_grad():
        m = torch.maximum(neg.amax(dim=1), pos).unsqueeze(1)                         # [B, 1] the shift
    n = kept.sum(dim=1).to(pos.dtype)                                                # [B] N per query
    e = torch.where(kept, torch.exp(neg - m), 0.0)                                   # e^{s/t} e^{-m}
    if beta == 0:
        negative = e.sum(dim=1)
    else:
        with torch.no_grad():
            # the weights scaled by the row's largest kept one (then 1): no overflow
            top = neg.masked_fill(~kept, float("-inf")).amax(dim=1, keepdim=True)
            top = torch.where(torch.isfinite(top), top, 0.0)                         # a row keeping none
        # a removed negative (maybe above the top) is not exponentiated: finite, weighs 0; no clamp,
        # whose zero gradient at the top would drop the hardest negative's weight gradient
        w = torch.where(kept, torch.exp(beta * torch.where(kept, neg - top, 0.0)), 0.0)   # w_j, unnormalised
        mean_w = w.sum(dim=1) / n.clamp(min=1)                                       # (1/N) Σ_j w_j
        negative = (w * e).sum(dim=1) / mean_w.clamp(min=torch.finfo(sim.dtype).tiny)
    pos_e = torch.exp(pos - m.squeeze(1))                                            # e^{p/t} e^{-m}
    if tau_plus:
        negative = (negative - tau_plus * n * pos_e) / (1.0 - tau_plus)
    floor = n * torch.exp(-1.0 / temperature - m.squeeze(1))                         # N e^{-1/t} e^{-m}
    negative = torch.maximum(negative, floor)
    return (m.squeeze(1) + torch.log(pos_e + negative) - pos).mean()
