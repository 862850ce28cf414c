"""Host-to-device copies that do not stall the device.

A copy to a CUDA device from ordinary (pageable) host memory is synchronous:
the host waits for the copy, and with it for the stream to drain
(``cudaStreamSynchronize``), so a ``.to(device)`` of a CPU tensor inside a
training step stops the CPU from queueing the rest of the step.  From
page-locked (pinned) memory, ``non_blocking=True`` queues the copy on the
current stream and returns at once.  :func:`to_device_async` is the one way a
step moves a tensor it made on the CPU (a permutation drawn by the CPU
generator, a draw of a CPU generator) to its device.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["to_device_async"]


def to_device_async(t: Tensor, device: torch.device | str) -> Tensor:
    """``t`` on ``device``, copied without waiting for the device.

    For a CUDA device, a CPU tensor is first copied into pinned host memory
    (a host-side copy) and then sent with ``non_blocking=True``: the copy is
    queued on the current stream, and PyTorch's pinned-memory cache keeps the
    staging block until that copy has run, so ``t`` may change or go at once.
    Elsewhere this is ``t.to(device, non_blocking=True)`` (nothing to pin; a
    tensor already on ``device`` comes back as it is).  The values are
    ``t``'s, bit for bit.
    """
    device = torch.device(device)
    if device.type == "cuda" and t.device.type == "cpu" and not t.is_pinned():
        t = t.pin_memory()
    return t.to(device, non_blocking=True)
