"""The fused negative sum of InfoNCE: ``Σ_j keep_ij exp(sim_ij / τ - m_i)``
over whichever form a selection is stored in, forward and backward in a few
passes over ``[B, K]``.  Its plain form is autograd through ``exp``, a mask
and a row sum (:func:`negatives.losses.info_nce.info_nce`), which it equals
bit for bit without synthetic negatives."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:  # pragma: no cover
    from ..policies.encodings import Mix, Swap

__all__ = ["Terms", "KeptExpSum", "mask_as"]


def mask_as(keep: Tensor, dtype: torch.dtype) -> Tensor:
    """A bool mask as 0/1 of a float dtype, for zeroing removed terms by a product.

    ``[B, K]`` bool -> 0/1 of ``dtype``: multiplying by it zeroes the
    removed terms with the same numbers as ``masked_fill`` or ``torch.where``
    (the terms are finite), and is cheaper on CPU; the cast goes through
    ``uint8``, cheaper than casting the bools."""
    return keep.view(torch.uint8).to(dtype)


@dataclass(frozen=True)
class Terms:
    """Which terms of the negative sum count, in a selection's stored forms.

    keep:       ``[B, w]`` bool, or None (all);
    drop_index: ``[B, r]`` positions whose terms are 0, or None;
    width:      only ``sim[:, :width]`` is read (the other columns get 0 gradient), or None;
    swap:       :class:`~negatives.policies.encodings.Swap`: its ``at`` terms are 0 and
                its valid ``to`` columns (cosines ``swap_cos [B, n]``) are counted instead;
    mix:        :class:`~negatives.policies.encodings.Mix`: synthetic negatives whose cosines
                ``mix_cos [B, s]`` are mixed from ``sim`` and ``qq [B, 1]`` (``q . q``);
    extra:      ``[B, s]`` cosines of synthetic negatives, always counted.

    ``swap_cos`` and ``mix_cos`` are filled in by the loss
    (:func:`negatives.losses.info_nce.fused_info_nce`).
    """

    keep: Tensor | None = None
    drop_index: Tensor | None = None
    width: int | None = None
    swap: "Swap | None" = None
    mix: "Mix | None" = None
    qq: Tensor | None = None
    extra: Tensor | None = None
    swap_cos: Tensor | None = None
    mix_cos: Tensor | None = None


class KeptExpSum(torch.autograd.Function):
    """InfoNCE's negative sum over the kept terms, shifted, with its gradient in one fused pass.

    ``S_i = Σ_j keep_ij exp(sim_ij / τ - m_i) + Σ_t exp(extra_it / τ - m_i)``
    (+ the swap's and the mix's terms): InfoNCE's negative term, shifted by
    ``m [B]`` (no gradient).

    Args: ``sim [B, K]``; ``extra [B, s]`` or None; ``qq [B, 1]`` or None (the
    mix's ``q . q``); ``m [B]``; ``temperature``; ``terms`` (:class:`Terms`).
    Returns ``[B]``; gradients to ``sim``, ``extra`` and ``qq``.

    Without ``extra``, the same numbers as autograd through
    ``exp(sim / τ - m)``, a product with the mask and a row sum -- forward
    and backward, bit for bit -- in fewer passes over ``[B, K]``: the
    exponentials are computed in place and kept for the backward pass, which
    is ``dS/dsim = e / τ`` with the removed terms already 0 (no mask is read
    twice, no intermediate is stored).  ``extra``, the mix and the swap's
    counted-in terms are summed apart from ``sim`` (no ``[B, K + s]`` copy,
    no ``[B, K]`` buffer for the mix's gradient, no ``[B, K]`` mask for the
    swap), which changes the rounding of ``S``, not its value.
    """

    @staticmethod
    def forward(ctx, sim: Tensor, extra: Tensor | None, qq: Tensor | None, m: Tensor, temperature: float,
                terms: Terms) -> Tensor:
        shift = m.unsqueeze(1)
        width, swap, mix = terms.width, terms.swap, terms.mix
        ctx.full_width = sim.shape[1]
        e = torch.div(sim if width is None else sim[:, :width], temperature).sub_(shift).exp_()
        if terms.keep is not None:
            e.mul_(mask_as(terms.keep, e.dtype))
        if terms.drop_index is not None:
            e.scatter_(1, terms.drop_index, 0.0)
        e_swap = None
        if swap is not None:
            # the swapped-out terms set to 0, the ones counted in their place
            # (kept ones: themselves; stand-ins: older columns) summed apart
            e.scatter_(1, swap.at, 0.0)
            e_swap = torch.div(terms.swap_cos, temperature).sub_(shift).exp_().mul_(mask_as(swap.valid, e.dtype))
        total = e.sum(dim=1)
        if e_swap is not None:
            total = total + e_swap.sum(dim=1)
        e_extra = None
        if extra is not None:
            e_extra = torch.div(extra, temperature).sub_(shift).exp_()
            total = total + e_extra.sum(dim=1)
        e_mix = None
        if mix is not None:
            # mix_cos = mix.combine(sim at mix.parents(), qq), computed by the caller
            e_mix = torch.div(terms.mix_cos, temperature).sub_(shift).exp_()
            total = total + e_mix.sum(dim=1)
        ctx.save_for_backward(e, e_extra, e_mix, e_swap)
        ctx.temperature, ctx.mix, ctx.swap = temperature, mix, swap
        return total

    @staticmethod
    def backward(ctx, grad: Tensor):
        e, e_extra, e_mix, e_swap = ctx.saved_tensors
        g = grad.unsqueeze(1)
        grad_extra = None if e_extra is None else (g * e_extra).div_(ctx.temperature)
        if e.shape[1] == ctx.full_width:
            grad_sim = (g * e).div_(ctx.temperature)
        else:
            # only the first `width` columns were read: the rest get 0, written
            # in place (no full-width zeros plus copy, as slicing sim would)
            grad_sim = e.new_empty((e.shape[0], ctx.full_width))
            torch.mul(g, e, out=grad_sim[:, :e.shape[1]]).div_(ctx.temperature)
            grad_sim[:, e.shape[1]:].zero_()
        grad_qq = None
        if e_mix is not None:
            # the mix's cosines a sim_i + c sim_j + d qq: their gradient added
            # into sim's in place (no [B, K] buffer of their own)
            mix = ctx.mix
            g_mix = (g * e_mix).div_(ctx.temperature)                              # [B, s]
            grad_sim.scatter_add_(1, mix.parents(), torch.cat([g_mix * mix.a, g_mix * mix.c], dim=1))
            grad_qq = (g_mix * mix.d).sum(dim=1, keepdim=True)
        if e_swap is not None:
            # the counted-in columns' gradient, into sim's (their own terms,
            # when kept, were set to 0 above: each column is counted once)
            grad_sim.scatter_add_(1, ctx.swap.to, (g * e_swap).div_(ctx.temperature))
        return grad_sim, grad_extra, grad_qq, None, None, None
