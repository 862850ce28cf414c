"""What MoCo and SimCLR share: the query encoder, and how a trainer spreads
it over processes without changing what the module saves."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from ..runtime.distributed import local_rows
from .shares import GradientShares

__all__ = ["ContrastiveMethod", "full_precision"]


def full_precision(t: Tensor) -> Tensor:
    """A tensor in float32 when it is half precision (bf16, fp16), else ``t`` itself, no copy.

    Embeddings, cosines and the loss are never computed in a half-precision type."""
    return t.float() if t.dtype in (torch.bfloat16, torch.float16) else t


class ContrastiveMethod(nn.Module):
    """A contrastive method with a query encoder ``encoder_q``.

    Its ``forward`` runs the query encoder through :attr:`query_encoder`:
    ``encoder_q`` itself, or the wrapper :meth:`distribute` set (PyTorch's
    ``DistributedDataParallel``, which all-reduces the gradients during the
    backward pass).  The wrapper is not a submodule, so state dicts and
    checkpoints are those of a single process."""

    encoder_q: nn.Module
    #: log only: the gradient's share by difficulty of each step's first queries (``pretrain.share_queries``)
    gradient_shares = GradientShares(0)

    @property
    def query_encoder(self) -> nn.Module:
        """The module the query views go through."""
        return self.__dict__.get("_query_wrapper", self.encoder_q)

    def image_rows(self, batch: int) -> slice:
        """The images of a global batch of ``batch`` that this process trains
        on: its contiguous slice (all of them in a single process)."""
        return local_rows(batch)

    def distribute(self, wrap: Callable[[nn.Module], nn.Module]) -> None:
        """Send the query views through ``wrap(encoder_q)`` from now on."""
        self.__dict__["_query_wrapper"] = wrap(self.encoder_q)
