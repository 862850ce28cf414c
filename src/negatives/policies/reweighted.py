"""``debiased[tau_plus]`` (Chuang et al. 2020, arXiv:2007.00224) and
``hard[beta,tau_plus]`` (Robinson et al. 2021, arXiv:2010.04592): every
negative kept, the loss changed (:mod:`negatives.losses.reweighted`)."""

from __future__ import annotations

import functools
import math
import re

from ..losses.reweighted import reweighted_nce
from .grammar import SEP, PolicyError, fields, fmt_number, match_form, numbers
from .recipe import Recipe

__all__ = ["debiased", "hard", "parse", "GRAMMAR", "DEBIASED_GRAMMAR", "HARD_GRAMMAR"]

DEBIASED_GRAMMAR = "'debiased[tau_plus]' with 0 <= tau_plus < 1 (class prior of Chuang et al. 2020)"
HARD_GRAMMAR = "'hard[beta,tau_plus]' with beta >= 0 (concentration) and 0 <= tau_plus < 1 (Robinson et al. 2021)"
GRAMMAR = f"{DEBIASED_GRAMMAR}; {HARD_GRAMMAR}"


def _check(tau_plus: float, beta: float, name: str, grammar: str) -> None:
    if not (math.isfinite(tau_plus) and 0.0 <= tau_plus < 1.0):
        raise PolicyError(
            f"policy {name!r}: tau_plus must lie in [0, 1), got {fmt_number(tau_plus)}; allowed: {grammar}"
        )
    if not (math.isfinite(beta) and beta >= 0.0):
        raise PolicyError(f"policy {name!r}: beta must be >= 0, got {fmt_number(beta)}; allowed: {grammar}")


def debiased(tau_plus: float) -> Recipe:
    """``debiased[tau_plus]``: every negative, the debiased loss of Chuang et al. 2020.

    >>> debiased(0.1).name
    'debiased[0.1]'
    """
    name = f"debiased[{fmt_number(tau_plus)}]"
    _check(float(tau_plus), 0.0, name, DEBIASED_GRAMMAR)
    return Recipe(name, loss=functools.partial(reweighted_nce, tau_plus=float(tau_plus)))


def hard(beta: float, tau_plus: float) -> Recipe:
    """``hard[beta,tau_plus]``: every negative, the hard-negative weighted loss of Robinson et al. 2021.

    >>> hard(1, 0.1).name
    'hard[1_0.1]'
    """
    name = f"hard[{fmt_number(beta)}{SEP}{fmt_number(tau_plus)}]"
    _check(float(tau_plus), float(beta), name, HARD_GRAMMAR)
    return Recipe(name, loss=functools.partial(reweighted_nce, tau_plus=float(tau_plus), beta=float(beta)))


#: the forms; the numbers are read by the shared number reader (:mod:`.grammar`)
_DEBIASED_RE = re.compile(r"^debiased\[([^\[\]]*)\]$")
_HARD_RE = re.compile(r"^hard\[([^\[\]]*)\]$")


def parse(text: str) -> Recipe | None:
    """Parse ``debiased[...]`` and ``hard[...]``; None for any other form.

    ``debiased[tau+]`` / ``hard[beta,tau+]`` -> :class:`~negatives.policies.recipe.Recipe`;
    None when ``text`` is neither; :class:`PolicyError` when it is one of them but malformed.

    >>> parse("debiased[0.10]").name
    'debiased[0.1]'
    >>> parse("hard[1.0, 1e-1]").name
    'hard[1_0.1]'
    """
    m = match_form(text, "debiased", _DEBIASED_RE, DEBIASED_GRAMMAR)
    if m is not None:
        return debiased(*numbers(fields(m.group(1)), text, "debiased policy", DEBIASED_GRAMMAR, counts=(1,)))
    m = match_form(text, "hard", _HARD_RE, HARD_GRAMMAR)
    if m is not None:
        return hard(*numbers(fields(m.group(1)), text, "hard policy", HARD_GRAMMAR, counts=(2,)))
    return None
