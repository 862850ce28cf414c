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

and returns a :class:`Selection`: which candidates count for each query
(:meth:`Selection.mask`, ``[B, K]`` bool), plus any synthetic negatives
(:meth:`Selection.synthetic`).  The method turns the selection into the loss
(:class:`negatives.methods.loss.ContrastiveLoss`); the trainer never knows
which policy it runs.

A policy is named by a short string that is parsed and validated in one place,
:func:`parse_policy` (an explicit registry of every family's parser,
:data:`PARSERS`), and is also its results folder name:

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
and ``curriculum[...]`` (:mod:`.ring`), ``debiased[...]`` and ``hard[...]``
(:mod:`.reweighted`), ``retain-hard[...]`` (:mod:`.retention`).

Rooms: :mod:`.grammar` (names, errors), :mod:`.candidates`, :mod:`.selection`
and :mod:`.encodings` (a policy's answer), :mod:`.base` (the interface,
``all``, ``@replace``), :mod:`.bands` (the paper's bands and class filters),
the families above, and :mod:`.registry` (the parser).

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
Ties are broken by the partial selection's order (:func:`top_k`: numpy's
``argpartition`` on CPU, :func:`torch.topk` elsewhere), which is
deterministic for a given device and input.
"""

from .bands import Band, ClassFilter, band_ranks, rank_window, top_k
from .base import All, NegativePolicy, Replace
from .candidates import Candidates
from .encodings import Mix, Swap
from .grammar import SEP, PolicyError, exact, fmt_number, match_form
from .mixing import MoCHi
from .registry import PARSERS, POLICY_GRAMMAR, parse_policy
from .retention import RetainHard, RetainingQueue
from .reweighted import Debiased, HardWeighted
from .ring import Curriculum, Ring, Schedule, ScheduledBand, parse_schedule
from .selection import Selection, replace_removed, select, stand_ins

__all__ = [
    "Candidates", "Selection", "Mix", "Swap", "NegativePolicy", "All", "Band", "ClassFilter", "Replace",
    "MoCHi", "Ring", "Curriculum", "Schedule", "ScheduledBand", "RetainHard", "RetainingQueue", "Debiased",
    "HardWeighted", "replace_removed", "stand_ins", "select", "PolicyError", "parse_policy", "parse_schedule",
    "band_ranks", "rank_window", "top_k", "exact", "fmt_number", "match_form", "SEP", "PARSERS", "POLICY_GRAMMAR",
]
