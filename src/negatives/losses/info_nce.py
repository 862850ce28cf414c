"""InfoNCE (van den Oord et al. 2018), the loss of MoCo (He et al. 2020) and
SimCLR (Chen et al. 2020), over the negatives a query keeps.

    L = -log( exp(l_pos/τ) / (exp(l_pos/τ) + Σ_{j kept} exp(sim_j/τ)) )

:func:`info_nce` is the plain form: the positive's cross-entropy among the
positive and the kept negatives, as in MoCo's ``builder.py`` (``logits:
Nx(1+K)``, labels 0).  :func:`fused_info_nce` is the form training runs: the
same value computed as ``m + log(exp(pos - m) + S) - pos`` with ``S`` the
fused negative sum (:class:`~negatives.losses.kernel.KeptExpSum`) over a
selection's stored form, and tested equal to :func:`info_nce`.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import Tensor

from .kernel import KeptExpSum, Terms

__all__ = ["info_nce", "fused_info_nce"]


def info_nce(l_pos: Tensor, neg: Tensor, keep: Tensor | None, temperature: float) -> Tensor:
    """Mean InfoNCE over the batch, plain form.

    Args:
        l_pos: ``[B]`` cosine of each query to its positive.
        neg: ``[B, n]`` cosine of each query to its candidate negatives.
        keep: ``[B, n]`` bool, True for a negative that counts (None: all).
        temperature: τ.

    Returns:
        0-d tensor.  A removed negative is absent from the denominator and gets no gradient.

    >>> float(info_nce(torch.tensor([1.0]), torch.tensor([[1.0, 0.0]]), torch.tensor([[True, False]]), 1.0))
    0.6931471824645996
    """
    logits = torch.cat([l_pos.unsqueeze(1), neg if keep is None else neg.masked_fill(~keep, float("-inf"))], 1)
    labels = torch.zeros(l_pos.shape[0], dtype=torch.long, device=l_pos.device)   # the positive is column 0
    return F.cross_entropy(logits / temperature, labels)


def fused_info_nce(l_pos: Tensor, sim: Tensor, temperature: float, terms: Terms | None = None) -> Tensor:
    """Mean InfoNCE over the batch, fast form: :func:`info_nce`'s value from a selection's stored terms.

    Mean InfoNCE over the batch, the fast form: the value of :func:`info_nce`
    for the candidates and synthetic negatives ``terms`` describes.

    Args:
        l_pos: ``[B]`` query-positive cosine.
        sim: ``[B, K]`` query-candidate cosines.
        temperature: τ.
        terms: which of ``sim``'s terms count, and any synthetic ones
            (:class:`~negatives.losses.kernel.Terms`, from
            :meth:`negatives.policies.selection.Selection.terms`); None: all.

    Returns:
        0-d tensor.

    Computed as ``m + log(Σ exp(x - m)) - l_pos/τ`` with ``m`` the row's
    largest logit, kept or not, and the removed terms of ``exp(x - m)`` set
    to 0: no ``-inf`` logits, which keep exp() off its fast path on CPU, and
    no ``[B, K]`` mask where a selection is stored without one.  The shift by
    a removed logit is safe because the logits are cosines over τ: kept terms
    are at least ``exp(-2/τ)``, far from float32 underflow for any τ >= 0.03.
    """
    t = terms or Terms()
    pos = l_pos / temperature
    with torch.no_grad():
        # the largest of sim / τ is the largest sim over τ (rounding is monotone)
        m = torch.maximum((sim if t.width is None else sim[:, :t.width]).amax(dim=1) / temperature, pos)
        if t.extra is not None:
            m = torch.maximum(m, t.extra.amax(dim=1) / temperature)
        swap_cos = mix_cos = None
        if t.swap is not None:
            swap_cos = sim.gather(1, t.swap.to)                                 # [B, n]
            m = torch.maximum(m, swap_cos.amax(dim=1) / temperature)
        if t.mix is not None:
            mix_cos = t.mix.combine(sim.gather(1, t.mix.parents()), t.qq)        # [B, s]
            m = torch.maximum(m, mix_cos.amax(dim=1) / temperature)
    t = dataclasses.replace(t, swap_cos=swap_cos, mix_cos=mix_cos)
    negative = KeptExpSum.apply(sim, t.extra, t.qq, m, temperature, t)
    return (m + torch.log(torch.exp(pos - m) + negative) - pos).mean()
