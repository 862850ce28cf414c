"""SimCLR (Chen et al. 2020, arXiv:2002.05709) with a pluggable negative policy (Cai et al.'s appendix A.2).

No queue and no momentum encoder: both views of a batch go through the one
encoder, and each of the ``2B`` views has its twin as positive and the other
``2B - 2`` views as candidate negatives::

    z     = normalize(f(cat(x_1, x_2)))           [2B, D]
    s     = z z^T                                 [2B, 2B]
    l_pos = s[i, twin(i)]                         [2B]
    sim   = s[i, candidates(i)]                   [2B, 2B-2]  every view but i and twin(i)
    sel   = policy(sim, candidates)                           keep [B, 2B-2] (+ MoCHi's synthetic negatives)
    loss  = loss(l_pos, sim, sel.keep, tau, synthetic)     (NT-Xent when every negative is kept)

Gradients flow through queries and negatives alike, as in SimCLR.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..losses.info_nce import info_nce
from ..policies.base import All, NegativePolicy
from ..policies.candidates import Candidates
from ..runtime.distributed import gather_rows, gather_with_grad, rank, world_size
from .base import ContrastiveMethod, full_precision

__all__ = ["SimCLR", "twin_index", "candidate_index"]


def twin_index(batch: int, device=None) -> Tensor:
    """``[2B]``: the positive of view ``i`` (``i + B`` for the first half, ``i - B`` after)."""
    i = torch.arange(2 * batch, device=device)
    return (i + batch) % (2 * batch)


def candidate_index(batch: int, device=None) -> Tensor:
    """``[2B, 2B-2]``: for view ``i``, every other view except its twin, in order."""
    n = 2 * batch
    view = torch.arange(n, device=device).unsqueeze(1)
    twin = twin_index(batch, device).unsqueeze(1)
    first, second = torch.minimum(view, twin), torch.maximum(view, twin)
    # 0 .. n-3 stepped over the two excluded columns, the lower one first
    # (arithmetic, no boolean indexing: nothing is read back from the device)
    cols = torch.arange(n - 2, device=device).expand(n, n - 2)
    cols = cols + (cols >= first)
    return cols + (cols >= second)


class SimCLR(ContrastiveMethod):
    """SimCLR with a negative policy: in-batch negatives, 2B - 2 per view (Chen et al. 2020, arXiv:2002.05709).

    Args:
        encoder: images ``[B, C, H, W]`` -> contrastive-space outputs ``[B, D]``
            (backbone + MLP head); normalised here.  Named ``encoder_q`` like
            MoCo's query encoder, so checkpoints and the evaluation read both alike.
        policy: which negatives count (default: all); one that needs MoCo's
            queue is refused by the policy name's check (:attr:`~negatives.policies.recipe.Recipe.needs_queue`).
        loss: ``(l_pos, sim, keep, temperature, synthetic) -> 0-d`` (default InfoNCE).
        temperature: τ.

    Called with two views ``[B, C, H, W]`` (:meth:`forward`): ``(loss, stats)``.

    >>> from negatives.models import build_encoder
    >>> simclr = SimCLR(build_encoder("small-cnn", 1, 8, width=4))
    >>> loss, stats = simclr(torch.rand(4, 1, 28, 28), torch.rand(4, 1, 28, 28), torch.zeros(4), torch.arange(4))
    >>> float(stats["kept"])                                     # 2B - 2
    6.0
    """

    def __init__(
        self, encoder: nn.Module, policy: NegativePolicy | None = None, loss=info_nce, temperature: float = 0.2
    ):
        super().__init__()
        self.encoder_q = encoder
        self.policy = policy or All()
        self.loss = loss
        self.temperature = temperature
        self._index: dict[tuple[int, str], Tensor] = {}

    def _candidates(self, batch: int, device) -> Tensor:
        key = (batch, str(device))
        if key not in self._index:
            self._index[key] = candidate_index(batch, device)
        return self._index[key]

    def image_rows(self, batch: int) -> slice:
        """Across ``R`` processes each holds ``2B / R`` of the ``2B`` views, in
        the single-process order (every first view, then every second): the
        first ``R / 2`` processes the first views of their slices of the
        images, the others the second views.  So every process normalises
        whole batch-norm splits of the single-process layout, and a run on
        ``R`` processes is the run on one for any ``R`` dividing
        ``bn_splits``; ``R`` must be even."""
        n, r = world_size(), rank()
        if n == 1:
            return slice(0, batch)
        if n % 2 or (2 * batch) % n:
            raise ValueError(
                f"SimCLR across {n} processes: each takes 2 x {batch} / {n} views of one kind, so the "
                "number of processes must be even and divide 2 x pretrain.batch_size"
            )
        size = 2 * batch // n
        start = (r % (n // 2)) * size
        return slice(start, start + size)

    def forward(self, x_1: Tensor, x_2: Tensor, labels: Tensor, indices: Tensor, progress: float = 0.0):
        """One SimCLR step's loss over both views.

        x_1, x_2: ``[B, C, H, W]`` two augmented views; labels, indices: ``[B]``
        (across processes: the images of :meth:`image_rows`, whose first or
        second views are this process's queries; every process's views are
        the candidates, as in one process).
        Returns ``(loss, stats)`` with stats a dict of 0-d tensors.
        """
        n = world_size()
        # one forward of this process's views; split batch-norm normalises
        # contiguous chunks, so no chunk holds both views of an image (no BN shortcut)
        views = torch.cat([x_1, x_2]) if n == 1 else (x_1 if rank() < n // 2 else x_2)
        # float32 under a bf16 autocast too (GPUs): only the encoder and the matmul in bf16
        z = F.normalize(full_precision(self.query_encoder(views)), dim=1)  # [2B / R, D]
        z, mine = _whole_batch(z)  # across processes: every process's views, and this one's rows
        q = z if n == 1 else z[mine]  # the queries (one node: autograd sums as in the plain form)
        batch = z.shape[0] // 2
        s = full_precision(q @ z.T)  # [2B, 2B]
        l_pos = s.gather(1, twin_index(batch, z.device)[mine].unsqueeze(1)).squeeze(1)  # [2B]
        pool_index = self._candidates(batch, z.device)[mine]  # [2B, 2B-2]
        sim = s.gather(1, pool_index)  # [2B, 2B-2]
        # every view's label and index (across processes, gathered: the first halves', then the second's)
        both_labels, both_indices = (
            (torch.cat([labels, labels]), torch.cat([indices, indices])) if n == 1 else gather_rows(labels, indices)
        )
        candidates = Candidates(
            labels=both_labels,
            indices=both_indices,
            keys=z.detach(),
            query_labels=both_labels[mine],
            queries=q.detach(),
            pool_index=pool_index,
            query_rows=None if n == 1 else (mine.start, z.shape[0]),
        )
        with torch.no_grad():
            selection = self.policy(sim.detach(), candidates, progress)
        # synthetic negatives are constants: their cosines' gradient reaches the query only
        mix_sim = None if selection.mix is None else full_precision(q @ z.detach().T).gather(1, pool_index)
        synthetic = None if mix_sim is None else selection.synthetic(q, mix_sim)  # [2B, s]
        neg, keep = selection.negatives(sim)  # [2B, 2B-2] and the mask, or a band's [2B, n] alone
        # log only: which negatives the gradient goes to, caught in the backward pass ({}: not measured)
        neg, synthetic, shares = self.gradient_shares.watch(sim, selection.at, neg, synthetic)
        loss = self.loss(l_pos, neg, keep, self.temperature, synthetic)
        return loss, {"l_pos": l_pos.detach().mean(), "kept": selection.kept_per_query(sim.shape[1]), **shares}


def _whole_batch(z: Tensor) -> tuple[Tensor, slice]:
    """``z [2B / R, D]`` of this process -> ``(Z [2B, D], rows)``: every
    process's views gathered with their gradient, in rank order the
    single-process layout (:meth:`SimCLR.image_rows`), and this process's
    rows of ``Z``.  One process: ``(z, all rows)``."""
    if world_size() == 1:
        return z, slice(None)
    r, size = rank(), z.shape[0]
    return gather_with_grad(z), slice(r * size, (r + 1) * size)
