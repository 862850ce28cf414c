"""Negative policies: which of a query's candidate negatives the loss sees.

Every policy is a small object with one interface::

    selection = policy(sim, candidates, progress)

* ``sim``        -- ``[B, K]`` cosine similarity of each query to each candidate
                    negative (its *difficulty*).
* ``candidates`` -- :class:`Candidates`, what is known about the queries and
                    their K candidates (labels, dataset indices, embeddings);
                    policies that do not need it ignore it.
* ``progress``   -- fraction of training done, in ``[0, 1]`` (for annealed
                    policies; the band policies ignore it).

and answers a :class:`Selection`: ``keep``, a ``[B, K]`` bool mask of the
candidates that count (None: all), and for MoCHi ``mix``, its synthetic
negatives (a band may add ``at``, the positions its mask marks, which the
method gathers instead of masking K columns).  The loss reads only that
(:func:`negatives.losses.info_nce.info_nce`); the trainer never knows which
policy it runs.

A policy is named by a short string that is parsed and validated in one place,
:func:`parse_policy` (an explicit registry of every family's parser,
:data:`PARSERS`), and is also its results folder name.  The name chooses a
:class:`Recipe`: the policy, and for some names the loss or MoCo's queue:

==============================  ===========================================
``all``                         every negative (the baseline)
``keep[a,b)``                   only the negatives whose difficulty
                                percentile is in ``[a, b)`` (Figure 2)
``drop[a,b)``                   every negative except that band (Figure 3)
``drop-same-class``             every negative not of the query's class
                                (Table 1; reads labels)
``drop[a,b)&same-class``        remove the band's negatives of the query's
                                class (Table 1; reads labels)
``drop[a,b)&other-class``       remove the band's negatives of other classes
``<drop policy>@replace``       the same removal in ``replace`` mode: each
                                removed negative is replaced by the next
                                older one, every query sees exactly K
==============================  ===========================================

and the neighbouring methods: ``mochi[...]`` (:mod:`.mixing`), ``ring[...]``
and ``curriculum[...]`` (:mod:`.ring`); ``debiased[...]`` and ``hard[...]``
choose a loss (:mod:`.reweighted`), ``retain-hard[...]`` a queue (:mod:`.retention`).

Rooms: :mod:`.base` (the interface, its answer :class:`Selection`, ``all``),
:mod:`.candidates`, :mod:`.grammar` (names, errors), :mod:`.bands` and
:mod:`.classes` (the paper's bands and class filters), :mod:`.replace` (``@replace``), the
families above, :mod:`.recipe` and :mod:`.registry` (the parser).

Percentiles.  For one query the K candidates are ranked by difficulty, rank
``r = 0`` the easiest and ``r = K - 1`` the hardest; the percentile of rank
``r`` is ``100 r / K``.  A band ``[a, b)`` of width ``w = b - a`` holds
exactly ``n = round(K w / 100)`` negatives (half rounds up, in exact
arithmetic on the percentiles as written: :func:`band_ranks`): the ranks
``lo .. lo + n - 1`` with ``lo = round(K a / 100)``, moved down where needed
so the band ends at rank ``K`` at the latest.  When ``K a / 100``
and ``K b / 100`` are whole numbers these are exactly the ranks with
``a <= p < b``; otherwise the band differs from that set by at most one
negative at an edge, which is the price of the exact count.  A band touching
100 always holds the hardest ``n``; one touching 0 the easiest ``n``.
Ties are broken by the partial selection's order (:func:`negatives.ranking.top_k`: numpy's
``argpartition`` on CPU, :func:`torch.topk` elsewhere), which is
deterministic for a given device and input.
"""

from .bands import Band, band_ranks, band_selection, rank_window
from .base import All, Mix, NegativePolicy, Selection
from .candidates import Candidates
from .classes import ClassFilter
from .grammar import SEP, PolicyError, fmt_number, match_form
from .mixing import MoCHi
from .recipe import Recipe
from .registry import PARSERS, POLICY_GRAMMAR, parse_policy
from .replace import Replace, replace_removed
from .ring import Curriculum, Ring, ScheduledBand
from .schedules import Schedule, parse_schedule

__all__ = [
    "Candidates",
    "Selection",
    "Mix",
    "NegativePolicy",
    "All",
    "Band",
    "ClassFilter",
    "Replace",
    "Recipe",
    "MoCHi",
    "Ring",
    "Curriculum",
    "Schedule",
    "ScheduledBand",
    "replace_removed",
    "PolicyError",
    "parse_policy",
    "parse_schedule",
    "band_ranks",
    "band_selection",
    "rank_window",
    "fmt_number",
    "match_form",
    "SEP",
    "PARSERS",
    "POLICY_GRAMMAR",
]
