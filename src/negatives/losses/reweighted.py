"""Reweighted contrastive losses: debiased (Chuang et al. 2020) and
hard-negative weighted (Robinson et al. 2021).

Both replace InfoNCE's negative term ``sum_i e^{s_i/t}`` by an estimate
``Ng`` and keep its form::

    L = -log( e^{p/t} / (e^{p/t} + Ng) ),   p = q . k+,  s_i = q . n_i,  t = temperature

over the ``N`` negatives a query keeps (``keep`` mask; ``N`` is counted per
query).  With class prior ``tau+`` (the chance that a "negative" shares the
query's class) and concentration ``beta >= 0``::

    w_i = e^{beta s_i / t} / ((1/N) sum_j e^{beta s_j / t})          (importance weights, mean 1)
    Ng  = max( (sum_i w_i e^{s_i/t} - tau+ N e^{p/t}) / (1 - tau+),  N e^{-1/t} )

``debiased[tau+]`` is ``beta = 0`` (every ``w_i = 1``); ``hard[beta,tau+]``
the general case.  The clamp at ``N e^{-1/t}`` (the smallest value the
negative term can take, every ``s_i = -1``) keeps the estimate positive when
the debiasing correction overshoots.  At ``tau+ = 0, beta = 0``
``Ng = sum_i e^{s_i/t}`` -- InfoNCE exactly: the clamp is inactive because
every ``e^{s_i/t} >= e^{-1/t}``.  As in the published code the weights are
not detached (they carry gradient).

Computed like :func:`negatives.losses.info_nce.fused_info_nce` (with its
:class:`~negatives.losses.kernel.KeptExpSum`
when ``beta = 0``, :class:`ImportanceSums` otherwise): every exponential is scaled by
``e^{-m}``, ``m`` the row's largest kept logit (or ``p/t``), so nothing
overflows at small temperatures and the neutral settings give InfoNCE's
numbers bit for bit.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .kernel import KeptExpSum, Terms, mask_as

__all__ = ["reweighted_nce", "debiased_nce", "hard_nce", "ImportanceSums"]


def reweighted_nce(l_pos: Tensor, sim: Tensor, keep: Tensor | None, temperature: float,
                   tau_plus: float = 0.0, beta: float = 0.0) -> Tensor:
    """Mean over the batch of ``-log(e^{p/t} / (e^{p/t} + Ng))`` (module docstring).

    l_pos: ``[B]`` query-positive cosine; sim: ``[B, n]`` query-negative
    cosine; keep: ``[B, n]`` bool or None (all kept); removed negatives are
    absent from every sum and from ``N``.
    """
    if not 0.0 <= tau_plus < 1.0:
        raise ValueError(f"tau_plus must lie in [0, 1), got {tau_plus}")
    if beta < 0:
        raise ValueError(f"beta must be >= 0, got {beta}")
    pos = l_pos / temperature                                                   # [B]
    with torch.no_grad():
        top = sim.amax(dim=1) / temperature                                     # [B] largest s / t
        m = torch.maximum(top, pos)                                             # [B], as info_nce
    if keep is None:
        n = torch.full_like(pos, float(sim.shape[1]))
    else:
        n = keep.sum(dim=1, dtype=torch.int32).to(pos.dtype)                    # [B] N per query
    if beta == 0:
        negative = KeptExpSum.apply(sim, None, None, m, temperature, Terms(keep=keep))  # sum e^{s/t}, scaled
    else:
        # weights scaled by the row's largest kept one (which is then 1): no
        # overflow, and removed negatives weigh exactly 0
        top_w = top
        if keep is not None:
            with torch.no_grad():
                top_w = sim.masked_fill(~keep, float("-inf")).amax(dim=1) / temperature
                top_w = torch.where(torch.isfinite(top_w), top_w, torch.zeros_like(top_w))   # a row keeping none
        imp_sum, weighted = ImportanceSums.apply(sim, m, top_w, temperature, beta, keep)
        mean_imp = imp_sum / n.clamp(min=1)                                     # (1/N) sum_j w_j
        negative = weighted / mean_imp.clamp(min=torch.finfo(sim.dtype).tiny)  # sum w_j e^{s_j/t} / mean
    pos_e = torch.exp(pos - m)                                                  # e^{p/t} e^{-m}
    if tau_plus:
        negative = (negative - tau_plus * n * pos_e) / (1.0 - tau_plus)
    floor = n * torch.exp(-1.0 / temperature - m)                               # N e^{-1/t} e^{-m}
    negative = torch.maximum(negative, floor)
    return (m + torch.log(pos_e + negative) - pos).mean()


class ImportanceSums(torch.autograd.Function):
    """The two row sums of the hard-weighted loss, forward and backward in one fused pass.

    The two row sums of the hard-weighted loss, in one fused pass:
    ``(Σ_j w_j, Σ_j w_j e_j)`` with ``w_j = exp(beta (sim_j / τ - top_w))``
    and ``e_j = exp(sim_j / τ - m)`` over the kept negatives.

    sim: ``[B, n]``; m, top_w: ``[B]`` (no gradient; ``top_w`` the row's
    largest kept ``sim / τ``, so every kept ``w_j <= 1``); keep: ``[B, n]``
    bool or None.  Returns two ``[B]``.  The backward pass is the analytic
    one, ``d/dsim_j = (beta g_1 w_j + (1 + beta) g_2 w_j e_j) / τ``, from the
    two saved ``[B, n]`` buffers: about half the passes over ``[B, n]`` of
    autograd through the same formula (whose numbers it gives to rounding,
    ``tests/test_methods.py``).
    """

    @staticmethod
    def forward(ctx, sim: Tensor, m: Tensor, top_w: Tensor, temperature: float, beta: float,
                keep: Tensor | None = None):
        x = torch.div(sim, temperature)                                         # s / t
        w = torch.sub(x, top_w.unsqueeze(1)).mul_(beta)
        if keep is not None:
            w.clamp_(max=0.0)        # a removed negative may lie above top_w: keep it finite, it is zeroed below
        w.exp_()                                                                # w_j
        we = x.sub_(m.unsqueeze(1)).exp_().mul_(w)                              # w_j e_j
        if keep is not None:
            mask = mask_as(keep, w.dtype)
            w.mul_(mask)
            we.mul_(mask)
        ctx.save_for_backward(w, we)
        ctx.temperature, ctx.beta = temperature, beta
        return w.sum(dim=1), we.sum(dim=1)

    @staticmethod
    def backward(ctx, grad_w: Tensor | None, grad_we: Tensor | None):
        w, we = ctx.saved_tensors
        b = ctx.beta
        grad = None                          # no zero-filled start: one pass fewer over [B, n]
        if grad_w is not None:
            grad = w * (b * grad_w).unsqueeze(1)
        if grad_we is not None:
            term = ((1.0 + b) * grad_we).unsqueeze(1)
            grad = we * term if grad is None else grad.addcmul_(we, term)
        return grad.div_(ctx.temperature), None, None, None, None, None


def debiased_nce(l_pos: Tensor, sim: Tensor, keep: Tensor | None, temperature: float,
                 tau_plus: float) -> Tensor:
    """Debiased contrastive loss (Chuang et al. 2020): :func:`reweighted_nce` with ``beta = 0``."""
    return reweighted_nce(l_pos, sim, keep, temperature, tau_plus=tau_plus, beta=0.0)


def hard_nce(l_pos: Tensor, sim: Tensor, keep: Tensor | None, temperature: float,
             beta: float, tau_plus: float) -> Tensor:
    """Hard-negative weighted loss (Robinson et al. 2021): :func:`reweighted_nce`."""
    return reweighted_nce(l_pos, sim, keep, temperature, tau_plus=tau_plus, beta=beta)
