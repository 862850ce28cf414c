"""MoCo v2 (Chen et al. 2020) with a pluggable negative policy.

The pieces, in the order of one training step::

    q = normalize(f_q(x_q))                       [B, D]   query embeddings
    momentum_update(f_q -> f_k, m)
    k = normalize(f_k(x_k[perm]))[argsort(perm)]  [B, D]   positive keys (no grad), shuffle-BN
    l_pos = q . k                                 [B]
    sim   = q . queue^T                           [B, K]   difficulty of each negative
    sel   = policy(sim, queue candidates)                  which negatives count:
                                                  a [B, K] mask, or the [B, n] positions kept
                                                  (+ synthetic negatives, for MoCHi)
    loss  = info_nce(l_pos, sim[sel], tau)        (or the policy's own loss)
    queue.enqueue(k, labels, indices)

Shuffle-BN (MoCo, Section 3.3): in training mode the key encoder sees the
batch in a random order and its outputs are put back in query order, so the
batch-norm statistics that normalise a key are never those of the same
sub-batch as its query.  With split batch-norm (``pretrain.bn_splits``) on one
device this is the official CIFAR demo's single-GPU shuffle: each split plays
one GPU of the multi-GPU shuffle-BN.  The permutation is drawn from torch's
global CPU generator, as ``torch.randperm(B)`` in the official code; the
trainer seeds it per epoch and checkpoints its state, so a run stays
deterministic and resumes bit for bit.

Labels in the queue are read only by oracle policies and the analyses, never
by the loss of a label-free run.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .policies import All, Candidates, Mix, NegativePolicy, Selection, Swap, select
from .queue import KeyQueue  # noqa: F401  (part of MoCo's API; policies make it)

__all__ = ["KeyQueue", "KeptExpSum", "full_precision", "mask_as", "info_nce", "policy_loss", "momentum_update",
           "shuffled_keys", "MoCo"]


def full_precision(t: Tensor) -> Tensor:
    """``t`` in float32 when it is bf16 or fp16 (under an autocast), else
    ``t`` itself (float32 and float64 untouched, no copy): the embeddings,
    cosines and loss are never computed in a half-precision type."""
    return t.float() if t.dtype in (torch.bfloat16, torch.float16) else t


def mask_as(keep: Tensor, dtype: torch.dtype) -> Tensor:
    """``[B, K]`` bool -> 0/1 of ``dtype``: multiplying by it zeroes the removed
    terms with the same numbers as ``masked_fill`` or ``torch.where`` (the
    terms are finite), and cheaper on CPU; the cast goes through ``uint8``,
    cheaper than casting the bools (benchmarks/RESULTS.md)."""
    return keep.view(torch.uint8).to(dtype)


class KeptExpSum(torch.autograd.Function):
    """``S_i = Σ_j keep_ij exp(sim_ij / τ - m_i) + Σ_t exp(extra_it / τ - m_i)``:
    InfoNCE's negative term, shifted by ``m [B]`` (no gradient).

    sim: ``[B, K]``; keep: ``[B, K]`` bool or None; drop_index: ``[B, r]``
    positions set to 0, or None; extra: ``[B, s]`` logits of synthetic
    negatives (always kept), or None; width: only ``sim[:, :width]`` is read
    (``keep`` is then ``[B, width]``; the other columns get 0 gradient);
    mix: a :class:`~negatives.policies.Mix` whose cosines ``mix_cos [B, s]``
    (``mix.combine`` of ``sim`` at ``mix.parents()`` and of ``qq [B, 1]``,
    the queries' ``q . q``) are synthetic negatives too: their gradient goes
    into ``sim`` at the parents' positions and into ``qq``; swap: a
    :class:`~negatives.policies.Swap` whose ``at`` terms are set to 0 and
    whose valid ``to`` columns of ``sim`` (``swap_cos [B, n]``, gathered by
    the caller) are counted instead, their gradient added into ``sim``'s at
    ``to``.  Returns ``[B]``.

    Without ``extra``, the same numbers as autograd through
    ``exp(sim / τ - m)``, a product with the mask and a row sum -- forward
    and backward, bit for bit (``tests/test_moco.py``) -- in fewer passes over
    ``[B, K]``: the exponentials are computed in place and kept for the
    backward pass, which is ``dS/dsim = e / τ`` with the removed terms
    already 0 (no mask is read twice, no intermediate is stored).
    ``extra``, the mix and the swap's counted-in terms are
    summed apart from ``sim`` (no ``[B, K + s]`` copy, no ``[B, K]`` buffer
    for the mix's gradient, no ``[B, K]`` mask for the swap), which changes
    the rounding of ``S``, not its value.
    """

    @staticmethod
    def forward(ctx, sim: Tensor, m: Tensor, temperature: float, keep: Tensor | None = None,
                drop_index: Tensor | None = None, extra: Tensor | None = None,
                width: int | None = None, mix: Mix | None = None, mix_cos: Tensor | None = None,
                qq: Tensor | None = None, swap: Swap | None = None, swap_cos: Tensor | None = None) -> Tensor:
        shift = m.unsqueeze(1)
        ctx.full_width = sim.shape[1]
        e = torch.div(sim if width is None else sim[:, :width], temperature).sub_(shift).exp_()
        if keep is not None:
            e.mul_(mask_as(keep, e.dtype))
        if drop_index is not None:
            e.scatter_(1, drop_index, 0.0)
        e_swap = None
        if swap is not None:
            # the swapped-out terms set to 0, the ones counted in their place
            # (kept ones: themselves; stand-ins: older columns) summed apart
            e.scatter_(1, swap.at, 0.0)
            e_swap = torch.div(swap_cos, temperature).sub_(shift).exp_().mul_(mask_as(swap.valid, e.dtype))
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
            e_mix = torch.div(mix_cos, temperature).sub_(shift).exp_()
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
        return grad_sim, None, None, None, None, grad_extra, None, None, None, grad_qq, None, None


def info_nce(l_pos: Tensor, sim: Tensor, keep: Tensor | None, temperature: float,
             drop_index: Tensor | None = None, extra: Tensor | None = None, width: int | None = None,
             mix: Mix | None = None, q: Tensor | None = None, swap: Swap | None = None) -> Tensor:
    """Mean InfoNCE over the batch.

    ``L = -log( exp(l_pos/τ) / (exp(l_pos/τ) + Σ_{i kept} exp(sim_i/τ)) )``

    l_pos: ``[B]`` query-positive cosine; sim: ``[B, K]`` query-negative
    cosine; keep: ``[B, K]`` bool or None (all kept); drop_index: optional
    ``[B, r]`` distinct positions removed (the others kept), the cheap form of
    a mask that removes few; extra: optional ``[B, s]`` cosines of synthetic
    negatives, always kept (MoCHi's, without concatenating them to ``sim``);
    width: only the first ``width`` columns of ``sim`` are candidates (replace
    mode; ``keep`` and ``drop_index`` then refer to them), the others get 0
    gradient; mix: synthetic negatives read from ``sim`` itself, with the
    queries ``q [B, D]`` (MoCHi on MoCo: ``mix.logits(q, sim)``, whose
    gradient is added into ``sim``'s in place); swap: a
    :class:`~negatives.policies.Swap`, ``[B, n]`` candidates exchanged one
    for one (a narrow band and a class relation; replace mode's stand-ins
    may lie past ``width``).
    Removed negatives are absent from the denominator (``mode: drop``) and
    get no gradient (exactly 0).

    Computed as ``m + log(Σ exp(x - m)) - l_pos/τ`` with ``m`` the row's
    largest logit, kept or not, and the removed terms of ``exp(x - m)`` set
    to 0 (:class:`KeptExpSum`; no ``-inf`` logits, which keep exp() off its
    fast path on CPU, and no ``[B, K]`` mask for ``drop_index``).  The shift
    by a removed logit is safe because the logits are cosines over τ: kept
    terms are at least ``exp(-2/τ)``, far from float32 underflow for any
    τ >= 0.03.
    """
    pos = l_pos / temperature
    with torch.no_grad():
        # the largest of sim / τ is the largest sim over τ (rounding is monotone)
        m = torch.maximum((sim if width is None else sim[:, :width]).amax(dim=1) / temperature, pos)
        if extra is not None:
            m = torch.maximum(m, extra.amax(dim=1) / temperature)
    swap_cos = None
    if swap is not None:
        with torch.no_grad():
            swap_cos = sim.gather(1, swap.to)                                  # [B, n]
            m = torch.maximum(m, swap_cos.amax(dim=1) / temperature)
    qq = mix_cos = None
    if mix is not None:
        qq = (q * q.detach()).sum(1, keepdim=True)                 # [B, 1], as Mix.logits
        with torch.no_grad():
            mix_cos = mix.combine(sim.gather(1, mix.parents()), qq)  # [B, s]
            m = torch.maximum(m, mix_cos.amax(dim=1) / temperature)
    negative = KeptExpSum.apply(sim, m, temperature, keep, drop_index, extra, width, mix, mix_cos, qq, swap,
                                swap_cos)
    return (m + torch.log(torch.exp(pos - m) + negative) - pos).mean()


def policy_loss(policy: NegativePolicy, selection: Selection, q: Tensor, l_pos: Tensor, sim: Tensor,
                temperature: float, mix_sim: Tensor | None = None) -> Tensor:
    """The contrastive loss of one step under a policy's selection.

    q: ``[B, D]`` queries; l_pos: ``[B]``; sim: ``[B, K]`` query-candidate
    cosines (with gradient).  Kept negatives are gathered (``index``) or
    masked (``keep``); synthetic ``extra`` negatives ``[B, s, D]`` are added
    as ``q . extra`` (gradient to the query only), and ``mix`` ones as
    ``mix.logits(q, mix_sim)`` [B, s].  ``mix_sim`` [B, K] (default ``sim``)
    are the same cosines with gradient to the query only: pass it when the
    candidates themselves get gradient (SimCLR), as the synthetic negatives
    are constants.  The loss is the policy's own (``policy.loss``) or InfoNCE.
    """
    loss_fn = policy.loss or info_nce
    if (loss_fn is info_nce and selection.index is None and selection.extra is None
            and (selection.mix is None or mix_sim is None)):
        # InfoNCE takes the selection as it comes: a mask, the removed
        # positions (no [B, K] mask), the first `width` columns (replace
        # mode), MoCHi's mix read from sim itself, a swap
        return info_nce(l_pos, sim, selection.keep, temperature, drop_index=selection.drop_index,
                        width=selection.width, mix=selection.mix, q=q, swap=selection.swap)
    if selection.swap is not None:
        # any other loss: the swap as the mask it stands for (its stand-ins
        # may lie past `width`, which the mask covers)
        selection = Selection(keep=selection.mask(sim.shape), extra=selection.extra, mix=selection.mix)
    if selection.width is not None:
        sim = sim[:, :selection.width]
        mix_sim = None if mix_sim is None else mix_sim[:, :selection.width]
    neg, keep = sim, selection.keep
    if selection.index is not None:
        neg, keep = sim.gather(1, selection.index), None                    # [B, n]
    elif selection.drop_index is not None:
        keep = selection.mask(sim.shape)
    synthetic = []
    if selection.extra is not None:
        synthetic.append(torch.einsum("bd,bsd->bs", q, selection.extra.to(q.dtype)))  # [B, s]
    if selection.mix is not None:
        # read from the full [B, K] cosines: the mix's positions are candidates'
        cosines = sim if mix_sim is None else mix_sim
        synthetic.append(selection.mix.logits(q, cosines).to(neg.dtype))             # [B, s]
    if synthetic and loss_fn is info_nce:
        # InfoNCE sums the synthetic negatives apart: no [B, K + s] copy
        return info_nce(l_pos, neg, keep, temperature, extra=torch.cat(synthetic, dim=1))
    if synthetic:
        neg = torch.cat([neg, *synthetic], dim=1)
        if keep is not None:
            keep = torch.cat([keep, keep.new_ones((keep.shape[0], neg.shape[1] - keep.shape[1]))], dim=1)
    return loss_fn(l_pos, neg, keep, temperature)


@torch.no_grad()
def momentum_update(query_encoder: nn.Module, key_encoder: nn.Module, m: float) -> None:
    """``θ_k <- m θ_k + (1 - m) θ_q`` for every parameter; buffers (BN
    running statistics) are copied as in the reference implementation's
    parameters-only update, i.e. left to the key encoder's own forward."""
    pk = [p.detach() for p in key_encoder.parameters()]
    pq = [p.detach() for p in query_encoder.parameters()]
    # one fused multi-tensor update instead of two kernels per parameter
    # (same arithmetic as pk.mul_(m).add_(pq, alpha=1 - m))
    torch._foreach_mul_(pk, m)
    torch._foreach_add_(pk, pq, alpha=1.0 - m)


@torch.no_grad()
def shuffled_keys(key_encoder: nn.Module, x_k: Tensor) -> Tensor:
    """Shuffle-BN: ``f_k(x_k[perm])[argsort(perm)]``, ``x_k [B, C, H, W] ->
    [B, D]`` in query order, with ``perm`` a fresh ``torch.randperm(B)`` of
    the global CPU generator (the official ``_batch_shuffle_single_gpu`` /
    ``_batch_unshuffle_single_gpu``)."""
    perm = torch.randperm(x_k.shape[0]).to(x_k.device)
    unshuffle = torch.argsort(perm)
    # x_k[perm] keeps a channels-last batch channels-last (index_select would not)
    return key_encoder(x_k[perm]).index_select(0, unshuffle)


class MoCo(nn.Module):
    """MoCo v2: a query encoder, its momentum copy, and the key queue.

    ``encoder`` maps images ``[B, C, H, W]`` to contrastive-space outputs
    ``[B, D]`` (backbone + MLP head); it is normalised here.
    """

    def __init__(
        self,
        encoder: nn.Module,
        dim: int,
        queue_size: int,
        momentum: float = 0.99,
        temperature: float = 0.2,
        policy: NegativePolicy | None = None,
        generator: torch.Generator | None = None,
        queue_extra: int = 0,
    ):
        """``queue_extra``: extra queue length for a ``replace``-mode policy
        (ignored otherwise): the queue holds ``queue_size + queue_extra`` keys
        and each query sees ``queue_size`` of them."""
        super().__init__()
        self.encoder_q = encoder
        self.encoder_k = copy.deepcopy(encoder)
        for p in self.encoder_k.parameters():
            p.requires_grad_(False)
        self.policy = policy or All()
        self.window = queue_size if self.policy.mode == "replace" else None
        extra = queue_extra if self.policy.mode == "replace" else 0
        if self.window is not None and extra <= 0:
            raise ValueError("a replace-mode policy needs pretrain.queue_extra > 0 (the older negatives "
                             "that stand in for removed ones)")
        self.queue = self.policy.make_queue(queue_size + extra, dim, generator=generator)
        self.momentum = momentum
        self.temperature = temperature

    def forward(self, x_q: Tensor, x_k: Tensor, labels: Tensor, indices: Tensor, progress: float = 0.0):
        """One MoCo step's loss; also enqueues the batch's keys.

        x_q, x_k: ``[B, C, H, W]`` two augmented views; labels, indices: ``[B]``.
        Returns ``(loss, stats)`` with stats a dict of 0-d tensors.
        """
        # embeddings, cosines and the loss in float32 under a bf16 autocast
        # too (GPUs): only the encoders and the [B, K] matmul run in bf16
        q = F.normalize(full_precision(self.encoder_q(x_q)), dim=1)
        with torch.no_grad():
            momentum_update(self.encoder_q, self.encoder_k, self.momentum)
            # shuffle-BN in training (module docstring); the order is irrelevant in eval mode
            k = shuffled_keys(self.encoder_k, x_k) if self.training else self.encoder_k(x_k)
            k = F.normalize(full_precision(k), dim=1)                             # [B, D]
        l_pos = (q * k).sum(dim=1)
        # a snapshot (newest first in replace mode): the queue is updated in
        # place below, before backward
        queue = self.queue
        if self.window is not None:
            # index_select copies (cheaper on CPU than queue.keys[pos])
            pos = queue.newest_first()
            keys, cand_labels, cand_indices = (t.index_select(0, pos) for t in (queue.keys, queue.labels,
                                                                                 queue.indices))
        else:
            keys, cand_labels, cand_indices = queue.keys.clone(), queue.labels, queue.indices
        keys = keys.to(q.dtype)                                                   # [K(+E), D]
        sim = full_precision(q @ keys.T)                                          # [B, K(+E)]
        candidates = Candidates(labels=cand_labels, indices=cand_indices, keys=keys,
                                query_labels=labels, queries=q.detach())
        with torch.no_grad():
            selection = select(self.policy, sim.detach(), candidates, progress, self.window)
        loss = policy_loss(self.policy, selection, q, l_pos, sim, self.temperature)
        self.queue.enqueue(k, labels, indices)
        kept = selection.kept_per_query(sim.shape[1])
        return loss, {"l_pos": l_pos.detach().mean(), "kept": kept}
