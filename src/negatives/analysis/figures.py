"""Figures: tidy tables of probe results (Figure 2) or of the Section 4
analyses (Figures 4-6, Tables A4-A6) in, figure files out.

Every figure writes ``{out_prefix}.pdf`` (paper), ``.png`` (report) and
``.csv`` (the numbers behind it); each plotted point is the mean over seeds
with a standard-deviation error bar.

Drawn in :mod:`.probe_figures` (Figure 2), :mod:`.comparison_figures`
(Figure 3, Table 1, SimCLR, the neighbouring methods), :mod:`.hardness_figures`
(Figures 4-6) and :mod:`.class_pair_tables` (Tables A4-A6), from what
:mod:`.plotting` and :mod:`.pair_runs` share; each figure's record
(:mod:`negatives.figure_registry`) says which draws it.
"""

from __future__ import annotations

from .class_pair_tables import tables_a4_a6
from .comparison_figures import against_baseline, fig3, fig_methods, simclr, table1
from .hardness_figures import fig4, fig5, fig6
from .pair_runs import load_analyses
from .plotting import EVALUATIONS, RANDOM_INIT, load_probes, summarize
from .probe_figures import fig2

__all__ = [
    "EVALUATIONS",
    "RANDOM_INIT",
    "load_probes",
    "summarize",
    "fig2",
    "against_baseline",
    "fig3",
    "table1",
    "simclr",
    "fig_methods",
    "load_analyses",
    "fig4",
    "fig5",
    "fig6",
    "tables_a4_a6",
]
