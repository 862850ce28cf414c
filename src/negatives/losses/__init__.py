"""Contrastive losses, one per module, each a short function with the paper it follows.

:mod:`.info_nce`:   InfoNCE, plain (:func:`info_nce`) and fused (:func:`fused_info_nce`);
:mod:`.reweighted`: the debiased (Chuang et al. 2020) and hard-negative weighted
                    (Robinson et al. 2021) losses;
:mod:`.kernel`:     the fused negative sum both fast forms use.
"""

from .info_nce import fused_info_nce, info_nce
from .kernel import KeptExpSum, Terms, mask_as
from .reweighted import ImportanceSums, debiased_nce, hard_nce, reweighted_nce

__all__ = ["info_nce", "fused_info_nce", "KeptExpSum", "Terms", "mask_as", "reweighted_nce", "debiased_nce",
           "hard_nce", "ImportanceSums"]
