"""The one place a policy string is read: an explicit registry of every
family's parser, the whole grammar, and ``@replace``.  A name becomes a
:class:`~negatives.policies.recipe.Recipe`: which candidates count, the loss
(``debiased[..]``, ``hard[..]``) and MoCo's queue (``retain-hard[..]``)."""

from __future__ import annotations

from . import bands, classes, mixing, retention, reweighted, ring
from .base import NegativePolicy
from .grammar import NUMBER_FORMS, PolicyError, refuse_non_finite
from .recipe import Recipe
from .replace import Replace

__all__ = ["PARSERS", "POLICY_GRAMMAR", "parse_policy"]

#: every family's parser, ``parse(text) -> NegativePolicy | Recipe | None``
#: (None: not of this family; :class:`PolicyError`: of this family but malformed)
PARSERS = {
    "classes": classes.parse,        # drop-same-class, drop[a,b)&same-class (the paper's Table 1)
    "bands": bands.parse,            # keep[a,b), drop[a,b) (the paper)
    "mixing": mixing.parse,          # mochi[...]
    "ring": ring.parse,              # ring[...], curriculum[...]
    "reweighted": reweighted.parse,  # debiased[...], hard[...]
    "retention": retention.parse,    # retain-hard[...]
}

POLICY_GRAMMAR = (
    f"'all', {bands.GRAMMAR}, "
    "and any drop policy followed by '@replace' (removed negatives replaced by older ones); "
    "'mochi[N,s,s']' or 'mochi[N,s,s',w]' (hard negative mixing), "
    "'ring[o,i]' or 'ring[o,i,schedule]' (Wu et al.'s Ring: the o% hardest without the hardest i% of them; "
    "o fixed or moving as 'x->y'), 'curriculum[a0,b0->a1,b1,schedule]' "
    "(schedule: constant, linear, stepS, expL, then optionally the percent of training it takes), "
    "'debiased[tau_plus]', 'hard[beta,tau_plus]', 'retain-hard[r]' or 'retain-hard[r,c]'; "
    f"{NUMBER_FORMS}"
)


def parse_policy(text: str) -> Recipe:
    """Parse a policy string into what the run uses; its ``name`` is canonical.

    Numbers are read by one reader (:func:`negatives.policies.grammar.number`:
    ``95``, ``99.9``, ``.5``, ``1e-1``, whitespace around them), separated by
    ``,`` or ``_`` on input; the canonical name (the results folder name)
    writes each in its shortest decimal form, separated by ``_``, and parses
    to itself (``parse_policy(str(p)).name == p.name``).

    >>> parse_policy("keep[95,100)").name
    'keep[95_100)'
    >>> parse_policy("drop[99.9, 100)").name
    'drop[99.9_100)'
    >>> parse_policy("drop[99.9_100) & same-class @replace").name
    'drop[99.9_100)&same-class@replace'

    Raises :class:`PolicyError` naming the allowed forms on anything else.
    """
    if not isinstance(text, str):
        raise PolicyError(f"policy must be a string, got {text!r}; allowed: {POLICY_GRAMMAR}")
    refuse_non_finite(text)
    base, sep, mode = text.strip().partition("@")
    found = _parse_base(base.strip(), text)
    recipe = found if isinstance(found, Recipe) else Recipe(found.name, found)
    if not sep:
        return recipe
    if mode.strip() != "replace":
        raise PolicyError(f"policy {text!r}: unknown mode {mode.strip()!r} after '@'; allowed: 'replace'")
    if recipe != Recipe(recipe.name, recipe.policy):
        raise PolicyError(f"'@replace' applies to a removal policy (drop...), got {recipe.name!r}")
    policy = Replace(recipe.policy)
    return Recipe(policy.name, policy)


def _parse_base(t: str, text: str) -> NegativePolicy | Recipe:
    if t == "all":
        return Recipe("all")
    for parse in PARSERS.values():
        found = parse(t)
        if found is not None:
            return found
    raise PolicyError(f"unknown policy {text!r}; allowed: {POLICY_GRAMMAR}")
