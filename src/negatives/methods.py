"""The contrastive methods a run can use, built in one place.

``moco``:   MoCo v2, a queue of K negatives (:mod:`negatives.moco`);
``simclr``: SimCLR, the other ``2B - 2`` views of the batch (:mod:`negatives.simclr`).

Both take the same negative policies; the trainer asks :func:`build_method`
for the model and never knows which method or policy it runs.
"""

from __future__ import annotations

from torch import nn

from .policies import NegativePolicy

__all__ = ["METHODS", "num_candidates", "build_method"]

METHODS = ("moco", "simclr")


def _check(method: str) -> None:
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; allowed: {', '.join(METHODS)}")


def num_candidates(method: str, queue_size: int, batch_size: int) -> int:
    """How many candidate negatives each query has: K (MoCo) or 2B - 2 (SimCLR)."""
    _check(method)
    return queue_size if method == "moco" else 2 * batch_size - 2


def build_method(method: str, encoder: nn.Module, *, dim: int, queue_size: int, queue_extra: int,
                 momentum: float, temperature: float, policy: NegativePolicy, generator=None) -> nn.Module:
    """The training model: ``model(x_q, x_k, labels, indices, progress) -> (loss, stats)``,
    with the trained encoder as ``model.encoder_q``."""
    _check(method)
    if method == "moco":
        from .moco import MoCo

        return MoCo(encoder, dim, queue_size, momentum, temperature, policy, generator=generator,
                    queue_extra=queue_extra)
    from .simclr import SimCLR

    return SimCLR(encoder, temperature, policy)
