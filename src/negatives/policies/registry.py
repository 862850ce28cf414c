"""The one place a policy string is read: an explicit registry of every
family's parser, the whole grammar, and ``@replace``."""

from __future__ import annotations

from . import bands, mixing, retention, reweighted, ring
from .base import All, NegativePolicy, Replace
from .grammar import NUMBER_FORMS, PolicyError, refuse_non_finite

__all__ = ["PARSERS", "POLICY_GRAMMAR", "parse_policy"]

#: every family's parser, ``parse(text) -> NegativePolicy | None`` (None: not
#: of this family; :class:`PolicyError`: of this family but malformed)
PARSERS = {
    "bands": bands.parse,            # keep[a,b), drop[a,b), class filters (the paper)
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


def parse_policy(text: str) -> NegativePolicy:
    """Parse a policy string into a policy object; its ``name`` is canonical.

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
    base = base.strip()
    if sep:
        if mode.strip() != "replace":
            raise PolicyError(f"policy {text!r}: unknown mode {mode.strip()!r} after '@'; allowed: 'replace'")
        return Replace(_parse_base(base, text))
    return _parse_base(base, text)


def _parse_base(t: str, text: str) -> NegativePolicy:
    if t == "all":
        return All()
    for parse in PARSERS.values():
        policy = parse(t)
        if policy is not None:
            return policy
    raise PolicyError(f"unknown policy {text!r}; allowed: {POLICY_GRAMMAR}")
