"""Contrastive losses, one per module, each a short function with the paper it follows.

Every loss has one signature, ``loss(l_pos [B], sim [B, K], keep [B, K] or
None, temperature, synthetic [B, s] or None) -> 0-d``:

:mod:`.info_nce`:   InfoNCE (MoCo, SimCLR), the default;
:mod:`.reweighted`: the debiased (Chuang et al. 2020) and hard-negative
                    weighted (Robinson et al. 2021) losses, ``debiased[..]``
                    and ``hard[..]``.
"""

from .info_nce import info_nce
from .reweighted import reweighted_nce

__all__ = ["info_nce", "reweighted_nce"]
