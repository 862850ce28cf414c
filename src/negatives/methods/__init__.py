"""The contrastive methods a run can use, built in one place.

``moco``:   MoCo v2, a queue of K negatives (:mod:`negatives.methods.moco`);
``simclr``: SimCLR, the other ``2B - 2`` views of the batch (:mod:`negatives.methods.simclr`).

Both take the same policies and losses, chosen by a policy name
(:class:`~negatives.policies.recipe.Recipe`); the trainer asks
:func:`build_method` for the model and never knows which method or policy it runs.
"""

from __future__ import annotations

import torch
from torch import nn

from ..policies.recipe import Recipe
from .moco import MoCo
from .shares import GradientShares
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


def build_method(
    method: str,
    encoder: nn.Module,
    recipe: Recipe,
    settings,
    temperature: float,
    generator: torch.Generator | None = None,
) -> nn.Module:
    """The training model of a method, with a policy name's negatives.

    Args:
        method: ``"moco"`` or ``"simclr"``.
        encoder: the query encoder (backbone + head).
        recipe: the policy name's :class:`~negatives.policies.recipe.Recipe`.
        settings: the pretraining settings (``dim``, ``queue_size``,
            ``queue_extra``, ``momentum``: a
            :class:`~negatives.training.settings.PretrainSettings`).
        temperature: τ.
        generator: for MoCo's random start-up keys.

    Returns:
        ``model(x_q, x_k, labels, indices, progress) -> (loss, stats)``, with
        the trained encoder as ``model.encoder_q``.
    """
    _check(method)
    if method == "simclr":
        if recipe.needs_queue:
            raise ValueError(
                f"policy {recipe.name!r} works through MoCo's queue of negatives (replace mode, "
                "retain-hard); SimCLR has none (use method moco, or the drop form of the policy)"
            )
        model = SimCLR(encoder, recipe.policy, recipe.loss, temperature)
    else:
        queue = recipe.make_queue(settings.queue_size, settings.queue_extra, settings.dim, generator)
        model = MoCo(encoder, queue, recipe.policy, recipe.loss, settings.momentum, temperature)
    model.gradient_shares = GradientShares(settings.share_queries)
    return model
