"""The one place a policy string is read: an explicit registry of every
family's parser, the whole grammar, ``@replace``, and the families other
packages add through entry points.  A name becomes a
:class:`~negatives.policies.recipe.Recipe`: which candidates count, the loss
(``debiased[..]``, ``hard[..]``) and MoCo's queue (``retain-hard[..]``).

A package adds a policy family by declaring, in the entry-point group
``negatives.policies`` (:data:`ENTRY_POINT_GROUP`), a name and a class
(docs/your-policy.md):

* the entry point's name is the family's name, lowercase letters, digits and
  ``-`` (``hard-plus-random``); it may not be a built-in family
  (:data:`FAMILIES`), and one name belongs to one package;
* its object is a subclass of :class:`~negatives.policies.NegativePolicy`,
  constructed with the numbers written in the brackets, as floats (read by
  the one number reader, :func:`~negatives.policies.grammar.number`):
  ``hard-plus-random[5]`` -> ``cls(5.0)``, ``hard-plus-random`` -> ``cls()``;
* the registry then sets the policy's ``name`` to the canonical form built as
  ours are (numbers by :func:`~negatives.policies.grammar.fmt_number`,
  separated by ``_``: ``hard-plus-random[5_2.5]``), which is its results
  folder name; the config check calls its ``validate`` as it calls ours.

Entry points are read once per process, through ``importlib.metadata``; a
family's class is imported the first time one of its policies is parsed.
"""

from __future__ import annotations

import functools
import re
from importlib.metadata import EntryPoint, entry_points

from . import band_names, classes, mixing, retention, reweighted, ring
from .base import NegativePolicy
from .grammar import NUMBER_FORMS, SEP, PolicyError, fields, fmt_number, numbers, refuse_non_finite
from .recipe import Recipe
from .replace import Replace

__all__ = ["ENTRY_POINT_GROUP", "FAMILIES", "PARSERS", "POLICY_GRAMMAR", "parse_policy", "plugins"]

#: every family's parser, ``parse(text) -> NegativePolicy | Recipe | None``
#: (None: not of this family; :class:`PolicyError`: of this family but malformed)
PARSERS = {
    "classes": classes.parse,  # drop-same-class, drop[a,b)&same-class (the paper's Table 1)
    "bands": band_names.parse,  # keep[a,b), drop[a,b) (the paper)
    "mixing": mixing.parse,  # mochi[...]
    "ring": ring.parse,  # ring[...], curriculum[...]
    "reweighted": reweighted.parse,  # debiased[...], hard[...]
    "retention": retention.parse,  # retain-hard[...]
}

#: the first word of every built-in policy (what a plugin may not be named);
#: a family added to PARSERS adds its words here
FAMILIES = ("all", "keep", "drop", "drop-same-class", "mochi", "ring", "curriculum", "debiased", "hard", "retain-hard")

#: the entry-point group where packages declare their policy families
ENTRY_POINT_GROUP = "negatives.policies"

POLICY_GRAMMAR = (
    f"'all', {band_names.GRAMMAR}, "
    "and any drop policy followed by '@replace' (removed negatives replaced by older ones); "
    "'mochi[N,s,s']' or 'mochi[N,s,s',w]' (hard negative mixing), "
    "'ring[o,i]' or 'ring[o,i,schedule]' (Wu et al.'s Ring: the o% hardest without the hardest i% of them; "
    "o fixed or moving as 'x->y'), 'curriculum[a0,b0->a1,b1,schedule]' "
    "(schedule: constant, linear, stepS, expL, then optionally the percent of training it takes), "
    "'debiased[tau_plus]', 'hard[beta,tau_plus]', 'retain-hard[r]' or 'retain-hard[r,c]'; "
    f"{NUMBER_FORMS}"
)

#: a family's name, as the first word of a policy string
_WORD = re.compile(r"[a-z][a-z0-9-]*")


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
        raise PolicyError(f"policy must be a string, got {text!r}; allowed: {_allowed()}")
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
    m = _WORD.match(t)
    word = m.group(0) if m else ""
    if word in plugins():
        if word in FAMILIES:
            raise PolicyError(
                f"policy {text!r}: the plugin family {word!r} of package {_packages(word)} takes the "
                f"name of a built-in family; rename its entry point in group {ENTRY_POINT_GROUP!r}"
            )
        return _plugin_policy(word, t, text)
    if t == "all":
        return Recipe("all")
    if word in FAMILIES:
        for parse in PARSERS.values():
            found = parse(t)
            if found is not None:
                return found
    raise PolicyError(f"unknown policy {text!r}; allowed: {_allowed()}")


@functools.cache
def plugins() -> dict[str, tuple[EntryPoint, ...]]:
    """The policy families installed packages declare, by name (read once per process).

    Each name maps to its entry points in :data:`ENTRY_POINT_GROUP`, one per
    package that declares it (more than one is refused when it is parsed)."""
    found: dict[str, list[EntryPoint]] = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        same = found.setdefault(ep.name, [])
        if all(e.value != ep.value for e in same):  # one package seen twice on the path: one plugin
            same.append(ep)
    return {name: tuple(eps) for name, eps in found.items()}


def _package(ep: EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    return repr(dist.name) if dist is not None else repr(ep.value.partition(":")[0])


def _packages(word: str) -> str:
    return " and ".join(_package(ep) for ep in plugins()[word])


def _one_line(e: BaseException) -> str:
    return f"{type(e).__name__}: {' '.join(str(e).split())}"


def _plugin_policy(word: str, t: str, text: str) -> NegativePolicy:
    eps = plugins()[word]
    where = f"policy {text!r} (the plugin family {word!r} of package {_packages(word)})"
    if len(eps) > 1:
        raise PolicyError(f"{where}: one family declared by several packages; uninstall all but one")
    m = re.fullmatch(rf"{re.escape(word)}(?:\[([^\[\]]*)\])?", t)
    allowed = f"{word!r} or '{word}[x,y,...]' (numbers)"
    if m is None:
        raise PolicyError(f"{where}: malformed; allowed: {allowed}")
    values = [] if m.group(1) is None else numbers(fields(m.group(1)), text, "plugin policy", allowed)
    try:
        cls = eps[0].load()
    except Exception as e:  # noqa: BLE001 -- any error of foreign code: one line naming the package
        raise PolicyError(f"{where}: its entry point {eps[0].value!r} failed to load ({_one_line(e)})") from None
    if not (isinstance(cls, type) and issubclass(cls, NegativePolicy)):
        raise PolicyError(
            f"{where}: its entry point {eps[0].value!r} is {cls!r}, not a subclass of negatives.policies.NegativePolicy"
        )
    try:
        policy = cls(*values)
        policy.name = f"{word}[{SEP.join(fmt_number(x) for x in values)}]" if values else word
    except PolicyError as e:  # the plugin's own refusal of these numbers
        raise PolicyError(f"{where}: {' '.join(str(e).split())}") from None
    except Exception as e:  # noqa: BLE001 -- its bug, or numbers it does not take: one line either way
        raise PolicyError(
            f"{where}: {cls.__name__}({', '.join(map(fmt_number, values))}) failed ({_one_line(e)})"
        ) from None
    return policy


def _allowed() -> str:
    """The built-in forms and the installed plugin families."""
    names = sorted(name for name in plugins() if _WORD.fullmatch(name) and name not in FAMILIES)
    text = POLICY_GRAMMAR + (
        "; and from installed plugins: " + ", ".join(f"'{n}' or '{n}[x,y,...]' (package {_packages(n)})" for n in names)
        if names
        else f"; no plugin families are installed (entry-point group {ENTRY_POINT_GROUP!r})"
    )
    # a name no policy string can spell (an upper-case letter, '_'): say so, or its package is a mystery
    text += "".join(
        f"; the entry point {n!r} of package {_packages(n)} is ignored: a family's name is lowercase "
        "letters, digits and '-'"
        for n in sorted(plugins())
        if not _WORD.fullmatch(n)
    )
    return text
