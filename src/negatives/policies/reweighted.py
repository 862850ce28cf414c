"""The reweighted losses as policies: ``debiased[tau_plus]`` (Chuang et al.
2020) and ``hard[beta,tau_plus]`` (Robinson et al. 2021) keep every negative
and change the loss (:mod:`negatives.losses.reweighted`)."""

from __future__ import annotations

import math
import re

from torch import Tensor

from ..losses.reweighted import reweighted_nce
from .base import NegativePolicy
from .candidates import Candidates
from .grammar import SEP, PolicyError, fields, fmt_number, match_form, numbers
from .selection import Selection

__all__ = ["Debiased", "HardWeighted", "parse", "GRAMMAR", "DEBIASED_GRAMMAR", "HARD_GRAMMAR"]

DEBIASED_GRAMMAR = "'debiased[tau_plus]' with 0 <= tau_plus < 1 (class prior of Chuang et al. 2020)"
HARD_GRAMMAR = ("'hard[beta,tau_plus]' with beta >= 0 (concentration) and 0 <= tau_plus < 1 "
                "(Robinson et al. 2021)")
GRAMMAR = f"{DEBIASED_GRAMMAR}; {HARD_GRAMMAR}"


class _LossPolicy(NegativePolicy):
    """Every negative is kept; the loss is changed (``loss`` has
    :func:`negatives.losses.info_nce.info_nce`'s signature)."""

    tau_plus: float = 0.0
    beta: float = 0.0

    def __call__(self, sim: Tensor, candidates: Candidates, progress: float = 0.0) -> Selection:
        return Selection.every()

    def loss(self, l_pos: Tensor, sim: Tensor, keep: Tensor | None, temperature: float) -> Tensor:
        return reweighted_nce(l_pos, sim, keep, temperature, tau_plus=self.tau_plus, beta=self.beta)


def _check(tau_plus: float, beta: float, name: str, grammar: str) -> None:
    if not (math.isfinite(tau_plus) and 0.0 <= tau_plus < 1.0):
        raise PolicyError(f"policy {name!r}: tau_plus must lie in [0, 1), got {fmt_number(tau_plus)}; allowed: {grammar}")
    if not (math.isfinite(beta) and beta >= 0.0):
        raise PolicyError(f"policy {name!r}: beta must be >= 0, got {fmt_number(beta)}; allowed: {grammar}")


class Debiased(_LossPolicy):
    """``debiased[tau_plus]``: the debiased contrastive loss of Chuang et al. 2020."""

    def __init__(self, tau_plus: float):
        self.tau_plus = float(tau_plus)
        self.name = f"debiased[{fmt_number(self.tau_plus)}]"
        _check(self.tau_plus, 0.0, self.name, DEBIASED_GRAMMAR)


class HardWeighted(_LossPolicy):
    """``hard[beta,tau_plus]``: the hard-negative weighted loss of Robinson et al. 2021."""

    def __init__(self, beta: float, tau_plus: float):
        self.beta, self.tau_plus = float(beta), float(tau_plus)
        self.name = f"hard[{fmt_number(self.beta)}{SEP}{fmt_number(self.tau_plus)}]"
        _check(self.tau_plus, self.beta, self.name, HARD_GRAMMAR)


#: the forms; the numbers are read by the shared number reader (:mod:`.grammar`)
_DEBIASED_RE = re.compile(r"^debiased\[([^\[\]]*)\]$")
_HARD_RE = re.compile(r"^hard\[([^\[\]]*)\]$")


def parse(text: str) -> _LossPolicy | None:
    """Parse ``debiased[...]`` and ``hard[...]``; None for any other form.

    ``debiased[tau+]`` / ``hard[beta,tau+]`` -> policy; None when ``text``
    is neither; :class:`PolicyError` when it is one of them but malformed.

    >>> parse("debiased[0.10]").name
    'debiased[0.1]'
    >>> parse("hard[1.0, 1e-1]").name
    'hard[1_0.1]'
    """
    m = match_form(text, "debiased", _DEBIASED_RE, DEBIASED_GRAMMAR)
    if m is not None:
        return Debiased(*numbers(fields(m.group(1)), text, "debiased policy", DEBIASED_GRAMMAR, counts=(1,)))
    m = match_form(text, "hard", _HARD_RE, HARD_GRAMMAR)
    if m is not None:
        return HardWeighted(*numbers(fields(m.group(1)), text, "hard policy", HARD_GRAMMAR, counts=(2,)))
    return None
