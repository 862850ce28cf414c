"""The contrastive methods a run can use, built in one place.

``moco``:   MoCo v2, a queue of K negatives (:mod:`negatives.methods.moco`);
``simclr``: SimCLR, the other ``2B - 2`` views of the batch (:mod:`negatives.methods.simclr`).

Both turn a policy's selection into the loss with the same
:class:`~negatives.methods.loss.ContrastiveLoss`.

Both take the same negative policies; the trainer asks :func:`build_method`
for the model and never knows which method or policy it runs.
"""

from __future__ import annotations

from torch import nn

from ..policies.base import NegativePolicy
from .moco import MoCo
from .simclr import SimCLR

__all__ = ["METHODS", "num_candidates", "build_method"]

#: the registry: a method's name in the config -> its model
METHODS = {"moco": MoCo, "simclr": SimCLR}


def _check(method: str) -> None:
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; allowed: {', '.join(METHODS)}")


def num_candidates(method: str, queue_size: int, batch_size: int) -> int:
    """How many candidate negatives each query has: K (MoCo) or 2B - 2 (SimCLR)."""
    _check(method)
    return queue_size if method == "moco" else 2 * batch_size - 2


def build_method(method: str, encoder: nn.Module, *, dim: int, queue_size: int, queue_extra: int,
                 momentum: float, temperature: float, policy: NegativePolicy, generator=None) -> nn.Module:
    """The training model of a method, with its negative policy.

    The training model: ``model(x_q, x_k, labels, indices, progress) -> (loss, stats)``,
    with the trained encoder as ``model.encoder_q``."""
    _check(method)
    if method == "moco":
        return MoCo(encoder, dim, queue_size, momentum, temperature, policy, generator=generator,
                    queue_extra=queue_extra)
    return SimCLR(encoder, temperature, policy)
