"""Figures: tidy tables of probe results (Figure 2) or of the Section 4
analyses (Figures 4-6, Tables A4-A6) in, figure files out.

Every figure writes ``{out_prefix}.pdf`` (paper), ``.png`` (report) and
``.csv`` (the numbers behind it); each plotted point is the mean over seeds
with a standard-deviation error bar.

Drawn in :mod:`.probe_figures` (Figures 2, 3, Table 1, SimCLR, the
neighbouring methods) and :mod:`.hardness_figures` (Figures 4-6, Tables
A4-A6), from what :mod:`.plotting` shares; this module is the registry
``python -m negatives figure NAME`` reads.
"""

from __future__ import annotations

import pandas as pd

from .hardness_figures import fig4, fig5, fig6, load_analyses, tables_a4_a6
from .plotting import EVALUATIONS, RANDOM_INIT, load_probes, summarize
from .probe_figures import against_baseline, fig2, fig3, fig_methods, simclr, table1

__all__ = ["EVALUATIONS", "RANDOM_INIT", "load_probes", "summarize", "fig2", "against_baseline", "fig3", "table1",
           "simclr", "fig_methods", "load_analyses", "fig4", "fig5", "fig6", "tables_a4_a6", "FIGURES", "build"]


# ------------------------------------------------------------------ dispatch

def _tables(paths, out_prefix, section: dict) -> pd.DataFrame:
    pairs, names = load_analyses(paths)
    return tables_a4_a6(pairs, out_prefix, class_names=names, **section)


#: figure name -> how it is drawn from (its input files, output prefix, its
#: ``config["figures"][name]`` section); an analysis figure's keyword arguments
#: are its section's keys
FIGURES = {
    "fig2": lambda paths, out, fig: fig2(load_probes(paths), out, fig["segments"], fig["easiest"]),
    "fig3": lambda paths, out, fig: fig3(load_probes(paths), out, fig["removed"]),
    "table1": lambda paths, out, fig: table1(load_probes(paths), out, fig["removed"]),
    "simclr": lambda paths, out, fig: simclr(load_probes(paths), out, fig["policies"]),
    "fig_methods": lambda paths, out, fig: fig_methods(load_probes(paths, extra_metrics=("train_images_per_s",)), out,
                                                       fig["policies"], fig["band"]),
    "fig4": lambda paths, out, fig: fig4(load_analyses(paths)[0], out, **fig),
    "fig5": lambda paths, out, fig: fig5(load_analyses(paths)[0], out, **fig),
    "fig6": lambda paths, out, fig: fig6(load_analyses(paths)[0], out, **fig),
    "tables_a4_a6": _tables,
}


def build(name: str, paths, out_prefix, config: dict) -> pd.DataFrame:
    """``python -m negatives figure NAME``: draw figure ``name`` from its input
    files (probe.json files; or pairs.parquet files, plus the similarity .tsv
    for the tables) with its section of the full config; returns the table
    written to CSV.  Probe files are checked before anything is drawn
    (:func:`negatives.analysis.plotting.load_probes`): a damaged one, one
    without a metric or without its ``evaluation`` record, or two evaluated
    with different settings are one error naming the file(s)."""
    if name not in FIGURES:
        raise ValueError(f"unknown figure {name!r}; allowed: {', '.join(FIGURES)}")
    section = config.get("figures", {}).get(name)
    if section is None:
        raise KeyError(f"the config has no figures.{name} section")
    return FIGURES[name](paths, out_prefix, section)
