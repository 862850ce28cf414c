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
    loss  = InfoNCE(l_pos, sim[sel], tau)         (or the policy's own loss: ContrastiveLoss)
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

from ..policies.base import All, NegativePolicy
from ..policies.candidates import Candidates
from ..policies.selection import select
from ..runtime.distributed import broadcast_, gather_rows, local_rows, rank, world_size
from ..runtime.transfer import to_device_async
from .base import ContrastiveMethod
from .loss import ContrastiveLoss, full_precision

__all__ = ["momentum_update", "shuffled_keys", "MoCo"]


@torch.no_grad()
def momentum_update(query_encoder: nn.Module, key_encoder: nn.Module, m: float) -> None:
    """MoCo's momentum update of the key encoder (He et al. 2020, Eq. 2).

    ``θ_k <- m θ_k + (1 - m) θ_q`` for every parameter; buffers (BN
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
    x_all, = gather_rows(x_k)                                                   # [B, C, H, W]
    # drawn on the CPU as in the official code, sent through pinned memory:
    # no blocking host-to-device copy inside the step
    perm = broadcast_(to_device_async(torch.randperm(x_all.shape[0]), x_k.device))
    unshuffle = torch.argsort(perm)
    mine = perm[local_rows(perm.shape[0])]
    # x[perm] keeps a channels-last batch channels-last (index_select would not)
    k_shuffled, = gather_rows(key_encoder(x_all[mine]))                         # [B, D], shuffled order
    return k_shuffled.index_select(0, unshuffle)


class MoCo(ContrastiveMethod):
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
        self.criterion = ContrastiveLoss(temperature, self.policy.loss)

    def forward(self, x_q: Tensor, x_k: Tensor, labels: Tensor, indices: Tensor, progress: float = 0.0):
        """One MoCo step's loss; also enqueues the batch's keys.

        x_q, x_k: ``[B, C, H, W]`` two augmented views; labels, indices: ``[B]``
        (across processes: this rank's slice of the batch; the loss is the mean
        over its queries, and the queue receives every rank's keys).
        Returns ``(loss, stats)`` with stats a dict of 0-d tensors.
        """
        # embeddings, cosines and the loss in float32 under a bf16 autocast
        # too (GPUs): only the encoders and the [B, K] matmul run in bf16
        q = F.normalize(full_precision(self.query_encoder(x_q)), dim=1)          # [B, D] (this rank's B/R)
        with torch.no_grad():
            momentum_update(self.encoder_q, self.encoder_k, self.momentum)
            # shuffle-BN in training (module docstring); the order is irrelevant in eval mode
            k_all = shuffled_keys(self.encoder_k, x_k) if self.training else gather_rows(self.encoder_k(x_k))[0]
            k_all = F.normalize(full_precision(k_all), dim=1)                     # [B, D] every rank's keys
            labels_all, indices_all = gather_rows(labels, indices)
        k = k_all[local_rows(k_all.shape[0])]                                     # this rank's positives
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
                                query_labels=labels, queries=q.detach(), query_rows=_query_rows(q.shape[0]))
        with torch.no_grad():
            selection = select(self.policy, sim.detach(), candidates, progress, self.window)
        loss = self.criterion(l_pos, sim, selection, q)
        self.queue.enqueue(k_all, labels_all, indices_all)                        # the same on every rank
        kept = selection.kept_per_query(sim.shape[1])
        return loss, {"l_pos": l_pos.detach().mean(), "kept": kept}


def _query_rows(b: int) -> tuple[int, int] | None:
    """This process's ``b`` queries as rows of the step's (``None`` alone)."""
    return None if world_size() == 1 else (rank() * b, world_size() * b)
