"""``retain-hard[r]`` / ``retain-hard[r,c]``: every negative kept, MoCo's
queue retains the keys most often among the queries' hardest ``c`` percent
(:class:`~negatives.queues.retaining.RetainingQueue`, Cai et al.'s future work)."""

from __future__ import annotations

import functools
import math
import re

from ..queues.retaining import RetainingQueue
from .grammar import SEP, PolicyError, fields, fmt_number, match_form, numbers
from .recipe import Recipe

__all__ = ["retain_hard", "parse", "GRAMMAR"]

GRAMMAR = (
    "'retain-hard[r]' or 'retain-hard[r,c]': the queue keeps up to a fraction r (0 < r < 1) of its slots "
    "for the keys most often among the queries' hardest c percent (0 < c < 100, default 5)"
)


def _check(retain: float, hard_pct: float, name: str, num_candidates: int) -> None:
    if RetainingQueue.hard_count(num_candidates, hard_pct) == 0:
        raise PolicyError(
            f"policy {name!r}: the hardest {fmt_number(hard_pct)}% of {num_candidates} "
            "negatives is no negative; raise c or use more negatives"
        )
    if math.floor(retain * num_candidates + 1e-9) == 0:
        raise PolicyError(
            f"policy {name!r}: r = {fmt_number(retain)} of {num_candidates} slots retains "
            f"none; allowed: r >= {fmt_number(1 / num_candidates)}"
        )


def retain_hard(retain: float, hard_pct: float = 5.0) -> Recipe:
    """``retain-hard[r,c]``: a :class:`~negatives.queues.retaining.RetainingQueue` of ``r`` and ``c``.

    >>> retain_hard(0.25).name, retain_hard(0.25, 10).name
    ('retain-hard[0.25]', 'retain-hard[0.25_10]')
    """
    retain, hard_pct = float(retain), float(hard_pct)
    name = (
        f"retain-hard[{fmt_number(retain)}]"
        if hard_pct == 5.0
        else f"retain-hard[{fmt_number(retain)}{SEP}{fmt_number(hard_pct)}]"
    )
    if not 0.0 < retain < 1.0:
        raise PolicyError(f"policy {name!r}: r must lie in (0, 1), got {fmt_number(retain)}; allowed: {GRAMMAR}")
    if not 0.0 < hard_pct < 100.0:
        raise PolicyError(f"policy {name!r}: c must lie in (0, 100), got {fmt_number(hard_pct)}; allowed: {GRAMMAR}")
    return Recipe(
        name,
        queue=functools.partial(RetainingQueue, retain=retain, hard_pct=hard_pct),
        check=functools.partial(_check, retain, hard_pct, name),
    )


#: the form; the numbers are read by the shared number reader (:mod:`.grammar`)
_RE = re.compile(r"^retain-hard\[([^\[\]]*)\]$")


def parse(text: str) -> Recipe | None:
    """Parse ``retain-hard[...]``; None for any other form.

    ``retain-hard[r]`` / ``retain-hard[r,c]`` -> :class:`~negatives.policies.recipe.Recipe`;
    None when ``text`` is not of this form; :class:`PolicyError` when it is but is malformed.

    >>> parse("retain-hard[0.25]").name
    'retain-hard[0.25]'
    >>> parse("retain-hard[2.5e-1, 5]").name
    'retain-hard[0.25]'
    """
    m = match_form(text, "retain-hard", _RE, GRAMMAR)
    if m is None:
        return None
    return retain_hard(*numbers(fields(m.group(1)), text, "retain-hard policy", GRAMMAR, counts=(1, 2)))
