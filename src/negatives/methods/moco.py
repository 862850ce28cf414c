"""MoCo v2 (Chen et al. 2020, arXiv:2003.04297; He et al. 2020, arXiv:1911.05722) with a pluggable negative policy.

One training step, as Algorithm 1 of the MoCo paper::

    q = normalize(f_q(x_q))                       [B, D]   query embeddings
    momentum_update(f_q -> f_k, m)
    k = normalize(f_k(x_k[perm]))[argsort(perm)]  [B, D]   positive keys (no grad), shuffle-BN
    l_pos = q . k                                 [B]
    sim   = q . queue^T                           [B, K]   difficulty of each negative
    sel   = policy(sim, candidates)                        which negatives count: keep [B, K]
                                                           (+ MoCHi's synthetic negatives)
    loss  = loss(l_pos, sim, sel.keep, tau, synthetic)     InfoNCE (or debiased, hard)
    queue.enqueue(k)

Shuffle-BN (MoCo, Section 3.3): in training mode the key encoder sees the
batch in a random order and its outputs are put back in query order, so the
batch-norm statistics that normalise a key are never those of the same
sub-batch as its query.  With split batch-norm (``pretrain.bn_splits``) on one
device this is the official CIFAR demo's single-GPU shuffle: each split plays
one GPU of the multi-GPU shuffle-BN.  The permutation is drawn from torch's
global CPU generator, as ``torch.randperm(B)`` in the official code; the
trainer seeds it per epoch and checkpoints its state, so a run stays
deterministic and resumes bit for bit.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..losses.info_nce import info_nce
from ..policies.base import All, NegativePolicy
from ..policies.candidates import Candidates
from ..queues.fifo import KeyQueue
from ..runtime.distributed import broadcast_, gather_rows, local_rows, step_rows
from ..runtime.transfer import to_device_async
from .base import ContrastiveMethod, full_precision

__all__ = ["momentum_update", "shuffled_keys", "MoCo"]


@torch.no_grad()
def momentum_update(query_encoder: nn.Module, key_encoder: nn.Module, m: float) -> None:
    """MoCo's momentum update of the key encoder (He et al. 2020, Eq. 2).

    ``θ_k <- m θ_k + (1 - m) θ_q`` for every parameter; buffers (BN
    running statistics) are copied as in the reference implementation's
    parameters-only update, i.e. left to the key encoder's own forward."""
    pk = [p.detach() for p in key_encoder.parameters()]
    pq = [p.detach() for p in query_encoder.parameters()]
    # one fused update of every parameter, the arithmetic of pk.mul_(m).add_(pq, alpha=1 - m)
    torch._foreach_mul_(pk, m)
    torch._foreach_add_(pk, pq, alpha=1.0 - m)


@torch.no_grad()
def shuffled_keys(key_encoder: nn.Module, x_k: Tensor) -> Tensor:
    """The keys of the whole batch, encoded in a shuffled order and put back (MoCo's shuffle-BN).

    Shuffle-BN: ``f_k(x[perm])[argsort(perm)]``, with ``perm`` a fresh
    ``torch.randperm(B)`` of the global CPU generator.  One process
    (``x_k [B, C, H, W] -> [B, D]``): the official ``_batch_shuffle_single_gpu``
    / ``_batch_unshuffle_single_gpu``.  Across ``R`` processes
    (``x_k [B/R, C, H, W] -> [B, D]``, every rank's keys in batch order): the
    official ``_batch_shuffle_ddp`` -- the batch gathered, shuffled by rank
    0's permutation, each rank encoding its slice of the shuffled batch, the
    keys gathered and put back in order.  The permutation reaches the
    device without a blocking copy (:func:`~negatives.runtime.transfer.to_device_async`)."""
    (x_all,) = gather_rows(x_k)  # [B, C, H, W]
    # drawn on the CPU as in the official code, sent through pinned memory:
    # no blocking host-to-device copy inside the step
    perm = broadcast_(to_device_async(torch.randperm(x_all.shape[0]), x_k.device))
    unshuffle = torch.argsort(perm)
    mine = perm[local_rows(perm.shape[0])]
    # x[perm] keeps a channels-last batch channels-last (index_select would not)
    (k_shuffled,) = gather_rows(key_encoder(x_all[mine]))  # [B, D], shuffled order
    return k_shuffled.index_select(0, unshuffle)


class MoCo(ContrastiveMethod):
    """MoCo v2 with a negative policy (He et al. 2020, arXiv:1911.05722; Chen et al. 2020, arXiv:2003.04297).

    Args:
        encoder: images ``[B, C, H, W]`` -> contrastive-space outputs ``[B, D]``
            (backbone + MLP head); normalised here.
        queue: the negatives (:class:`~negatives.queues.fifo.KeyQueue`, or one
            from a policy name's :meth:`~negatives.policies.recipe.Recipe.make_queue`).
        policy: which negatives count (default: all).
        loss: ``(l_pos, sim, keep, temperature, synthetic) -> 0-d`` (default InfoNCE).
        momentum: m of the key encoder's update.
        temperature: τ.

    Called with two views ``[B, C, H, W]`` (:meth:`forward`): ``(loss, stats)``.

    >>> from negatives.models import build_encoder
    >>> moco = MoCo(build_encoder("small-cnn", 1, 8, width=4), KeyQueue(8, 8))
    >>> loss, stats = moco(torch.rand(4, 1, 28, 28), torch.rand(4, 1, 28, 28), torch.zeros(4), torch.arange(4))
    >>> loss.shape, float(stats["kept"])
    (torch.Size([]), 8.0)
    """

    def __init__(
        self,
        encoder: nn.Module,
        queue: KeyQueue,
        policy: NegativePolicy | None = None,
        loss=info_nce,
        momentum: float = 0.99,
        temperature: float = 0.2,
    ):
        super().__init__()
        self.encoder_q = encoder
        self.encoder_k = copy.deepcopy(encoder)
        for p in self.encoder_k.parameters():
            p.requires_grad_(False)
        self.queue = queue
        self.policy = policy or All()
        self.loss = loss
        self.momentum = momentum
        self.temperature = temperature

    def forward(self, x_q: Tensor, x_k: Tensor, labels: Tensor, indices: Tensor, progress: float = 0.0):
        """One MoCo step's loss; also enqueues the batch's keys.

        Args:
            x_q, x_k: ``[B, C, H, W]`` two augmented views.
            labels, indices: ``[B]`` (across processes: this rank's slice of
                the batch; the loss is the mean over its queries, and the
                queue receives every rank's keys).
            progress: the fraction of training done.

        Returns:
            ``(loss, stats)``: the 0-d loss, and a dict of 0-d tensors.
        """
        # embeddings, cosines and the loss in float32 under a bf16 autocast
        # too (GPUs): only the encoders and the [B, K] matmul run in bf16
        q = F.normalize(full_precision(self.query_encoder(x_q)), dim=1)  # [B, D] (this rank's B/R)
        with torch.no_grad():
            momentum_update(self.encoder_q, self.encoder_k, self.momentum)
            # shuffle-BN in training (module docstring); the order is irrelevant in eval mode
            k_all = shuffled_keys(self.encoder_k, x_k) if self.training else gather_rows(self.encoder_k(x_k))[0]
            k_all = F.normalize(full_precision(k_all), dim=1)  # [B, D] every rank's keys
            labels_all, indices_all = gather_rows(labels, indices)
        k = k_all[local_rows(k_all.shape[0])]  # this rank's positives
        l_pos = (q * k).sum(dim=1)  # [B]
        # a copy (newest first for @replace): the queue is updated in place below, before backward
        keys, cand_labels, cand_indices = self.queue.snapshot()
        keys = keys.to(q.dtype)  # [K, D]
        sim = full_precision(q @ keys.T)  # [B, K]
        candidates = Candidates(
            labels=cand_labels,
            indices=cand_indices,
            keys=keys,
            query_labels=labels,
            queries=q.detach(),
            age_ordered=self.queue.age_ordered,
            query_rows=step_rows(q.shape[0]),
        )
        with torch.no_grad():
            selection = self.policy(sim.detach(), candidates, progress)
        neg, keep = selection.negatives(sim)  # [B, K] and the mask, or a band's [B, n] alone
        synthetic = selection.synthetic(q, sim)
        # log only: which negatives the gradient goes to, caught in the backward pass ({}: not measured)
        neg, synthetic, shares = self.gradient_shares.watch(sim, selection.at, neg, synthetic)
        loss = self.loss(l_pos, neg, keep, self.temperature, synthetic)
        self.queue.enqueue(k_all, labels_all, indices_all, sim=sim.detach())  # the same on every rank
        return loss, {"l_pos": l_pos.detach().mean(), "kept": selection.kept_per_query(sim.shape[1]), **shares}
