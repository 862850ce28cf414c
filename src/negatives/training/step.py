"""One training step, the one the trainer, the benchmarks and the host-sync
and launch-count checks all run: two augmented views, the method's loss,
backward, SGD."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..runtime import distributed
from .settings import step_precision

__all__ = ["train_step"]


def train_step(
    model: nn.Module,
    aug: nn.Module,
    opt: torch.optim.Optimizer,
    x: Tensor,
    labels: Tensor,
    indices: Tensor,
    progress=0.0,
    split: tuple[int, slice] | None = None,
):
    """One step of ``model`` (MoCo or SimCLR) on the images ``x``; returns
    ``(loss, stats)``, detached, on the device (nothing is read back).

    ``x``: uint8 ``[b, C, H, W]``, both views drawn by ``aug`` from it, or
    ``[b, 2, C, H, W]``, the two views already cropped as they were decoded
    (a streamed folder); ``split``: ``(batch, rows)``, the global batch size
    and this process's rows of it (several processes; the draws are the
    whole batch's).  ``progress``: the fraction of training done, for
    scheduled policies.  Views go channels-last, the step runs in
    :func:`~negatives.training.settings.step_precision`, and across processes
    the batch-norm running statistics are averaged after the update."""
    batch, rows = split or (None, None)
    if x.dim() == 5:
        x_q = aug(x[:, 0], batch=batch, rows=rows, cropped=True)
        x_k = aug(x[:, 1], batch=batch, rows=rows, cropped=True)
    else:
        x_q, x_k = aug(x, batch=batch, rows=rows), aug(x, batch=batch, rows=rows)
    x_q, x_k = (v.contiguous(memory_format=torch.channels_last) for v in (x_q, x_k))
    with step_precision(x.device):
        loss, stats = model(x_q, x_k, labels, indices, progress=progress)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    distributed.average_buffers_(model)
    return loss.detach(), {k: v.detach() for k, v in stats.items()}
