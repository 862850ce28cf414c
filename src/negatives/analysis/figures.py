"""Figures: tidy tables of probe results (Figure 2) or of the Section 4
analyses (Figures 4-6, Tables A4-A6) in, figure files out.

Every figure writes ``{out_prefix}.pdf`` (paper), ``.png`` (report) and
``.csv`` (the numbers behind it); each plotted point is the mean over seeds
with a standard-deviation error bar.

Drawn in :mod:`.probe_figures` (Figures 2, 3, Table 1, SimCLR, the
neighbouring methods) and :mod:`.hardness_figures` (Figures 4-6, Tables
A4-A6), from what :mod:`.plotting` shares; :func:`build` draws the figure
``python -m negatives figure NAME`` names with its record's function
(:mod:`negatives.figure_registry`).
"""

from __future__ import annotations

import pandas as pd

from ..figure_registry import record
from .hardness_figures import fig4, fig5, fig6, load_analyses, tables_a4_a6
from .plotting import EVALUATIONS, RANDOM_INIT, load_probes, summarize
from .probe_figures import against_baseline, fig2, fig3, fig_methods, simclr, table1

__all__ = ["EVALUATIONS", "RANDOM_INIT", "load_probes", "summarize", "fig2", "against_baseline", "fig3", "table1",
           "simclr", "fig_methods", "load_analyses", "fig4", "fig5", "fig6", "tables_a4_a6", "build"]


def build(name: str, paths, out_prefix, config: dict) -> pd.DataFrame:
    """``python -m negatives figure NAME``: draw figure ``name`` with its
    record's function (:mod:`negatives.figure_registry`) from its input
    files (probe.json files; or pairs.parquet files, plus the similarity .tsv
    for the tables) with its section of the full config; returns the table
    written to CSV.  Probe files are checked before anything is drawn
    (:func:`negatives.analysis.plotting.load_probes`): a damaged one, one
    without a metric or without its ``evaluation`` record, or two evaluated
    with different settings are one error naming the file(s)."""
    fig = record(name)
    section = config.get("figures", {}).get(name)
    if section is None:
        raise KeyError(f"the config has no figures.{name} section")
    return fig.draw(paths, out_prefix, section)
