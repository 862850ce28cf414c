"""Every figure the workflow builds, each declared once, as one :class:`Figure` record.

A record says which runs the figure needs (the policies named under its
``config["figures"][name]`` section, trained beside the baseline ``all``, and
the method they train with), what it is drawn from (the runs' probes or their
Section 4 analyses), the function that draws it, and its place in the
Snakemake report (its category; its caption is ``workflow/report/{name}.rst``).
:mod:`negatives.grid` turns the records into runs and file names,
``workflow/rules/figures.smk`` makes one rule per record, the default target
builds them all, and ``python -m negatives figure NAME`` draws with the
record's function.  Its user settings stay in the config schema
(``figures.NAME``).

The drawing functions import the plotting modules only when called: the
workflow reads this module while it plans, without matplotlib or torch.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "Figure",
    "REGISTRY",
    "SOURCES",
    "CAPTIONS",
    "FIGURE_EXTENSIONS",
    "SCHEMA_FILE",
    "register",
    "record",
    "check_records",
    "build",
]

#: what a figure is drawn from: the runs' ``probe.json``, their ``analysis/pairs.parquet``, or their training logs
SOURCES = ("probes", "analyses", "training")

#: the folder of the report captions, relative to the repository root
CAPTIONS = "workflow/report"

#: the config schema, relative to the repository root: its ``figures.NAME`` sections hold each figure's settings
SCHEMA_FILE = "workflow/schemas/config.schema.yaml"

#: the files every figure writes beside each other
FIGURE_EXTENSIONS = ("pdf", "png", "csv")

#: a figure's name is its Snakemake target, rule and file name
_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")


@dataclass(frozen=True)
class Figure:
    """One figure: its runs, how it is drawn, and its place in the report.

    ``draw(paths, out_prefix, section)`` draws it from its input files (see
    :func:`negatives.grid.figure_inputs`) with its config section, writes
    ``out_prefix`` + each of ``extensions``, and returns the table of the CSV.
    ``policy_keys`` name the keys of its section that hold policy strings
    (a string or a list of them): its runs train those and the baseline
    ``all``, at each of its temperatures and the config's seeds; ``runs_of``
    names another figure whose runs (policies and temperatures) it draws.
    """

    name: str
    category: str  # the report's heading (Snakemake's report lists headings by name)
    draw: Callable
    policy_keys: tuple[str, ...] = ()
    source: str = "probes"
    method: str | None = None  # its runs' method; None: the config's ``method``
    similarity: bool = False  # also reads the dataset's WordNet similarity file (the class names)
    mem_mb: int = 2000  # the figure job's memory in MB (times the attempt on a retry)
    extensions: tuple[str, ...] = FIGURE_EXTENSIONS
    runs_of: str | None = None  # the figure whose runs it draws, with that figure's config section
    dynamics: bool = False  # a figure of training logs that also reads its runs' analysis/dynamics.csv

    @property
    def caption(self) -> str:
        """Its report caption (a Jinja template over ``snakemake.config``), relative to the repository root."""
        return f"{CAPTIONS}/{self.name}.rst"

    def policies(self, section: dict) -> list[str]:
        """The policy strings its runs train, as written: ``all``, then those under ``policy_keys`` in order."""
        out = ["all"]
        for key in self.policy_keys:
            value = section[key]
            out += [value] if isinstance(value, str) else list(value)
        return out


#: figure name -> its record, in the order the default target lists them
REGISTRY: dict[str, Figure] = {}


def register(fig: Figure) -> Figure:
    """Add ``fig`` to :data:`REGISTRY`; a record that could not be built is refused with one line naming it."""
    where = f"figure record {fig.name!r}"
    if not isinstance(fig.name, str) or not _NAME.fullmatch(fig.name):
        raise ValueError(f"{where}: a name is a letter, then letters, digits or '_' (its target and file name)")
    if fig.name in REGISTRY:
        raise ValueError(f"{where}: declared twice")
    if fig.source not in SOURCES:
        raise ValueError(f"{where}: source {fig.source!r}; allowed: {', '.join(SOURCES)}")
    if fig.source == "analyses" and fig.policy_keys:
        raise ValueError(f"{where}: a figure drawn from analyses uses the baseline runs only; it has no policy_keys")
    if fig.dynamics and fig.source != "training":
        raise ValueError(f"{where}: only a figure drawn from training logs reads the runs' dynamics")
    if fig.similarity and fig.source != "analyses":
        raise ValueError(f"{where}: only a figure drawn from analyses reads the similarity file")
    if fig.runs_of is not None and (fig.runs_of not in REGISTRY or fig.policy_keys):
        raise ValueError(f"{where}: runs_of names a figure declared before it, and then it has no policy_keys")
    if not callable(fig.draw):
        raise ValueError(f"{where}: draw must be a function (paths, out_prefix, section) -> table")
    REGISTRY[fig.name] = fig
    return fig


def record(name: str) -> Figure:
    """The record of figure ``name``; an unknown name is refused naming those allowed."""
    if name not in REGISTRY:
        raise ValueError(f"unknown figure {name!r}; allowed: {', '.join(REGISTRY)}")
    return REGISTRY[name]


def check_records(root) -> None:
    """Every record has its caption file and a ``figures.NAME`` section in the
    config schema, and every such section a record (the workflow under
    ``root``); raise ValueError naming the first figure and file that do not."""
    import yaml

    root = Path(root)
    sections = yaml.safe_load((root / SCHEMA_FILE).read_text())["properties"]["figures"]["properties"]
    for name, fig in REGISTRY.items():
        if not (root / fig.caption).is_file():
            raise ValueError(f"figure {name}: its report caption {fig.caption} is missing")
        if fig.runs_of is None and name not in sections:  # a figure of another's runs reads that one's section
            raise ValueError(
                f"figure {name}: {SCHEMA_FILE} has no figures.{name} section (its settings, "
                "temperatures at least, with default: {})"
            )
    for name in sections:
        if name not in REGISTRY:
            raise ValueError(f"{SCHEMA_FILE}: figures.{name} names no figure (negatives.figure_registry)")


def build(name: str, paths, out_prefix, config: dict):
    """``python -m negatives figure NAME``: draw figure ``name`` with its record's function.

    From its input files (probe.json files; or pairs.parquet files, plus the
    similarity .tsv for the tables) with its section of the full config;
    returns the table written to CSV.  Probe files are checked before
    anything is drawn (:func:`negatives.analysis.plotting.load_probes`): a
    damaged one, one without a metric or without its ``evaluation`` record,
    or two evaluated with different settings are one error naming the file(s)."""
    fig = record(name)
    owner = fig.runs_of or name
    section = config.get("figures", {}).get(owner)
    if section is None:
        raise KeyError(f"the config has no figures.{owner} section")
    return fig.draw(paths, out_prefix, section)


# ------------------------------------------------------------------ drawing, from the input files


def _probes(paths, extra_metrics=()):
    from .analysis.plotting import load_probes

    return load_probes(paths, extra_metrics=extra_metrics)


def _pairs(paths):
    from .analysis.pair_runs import load_analyses

    return load_analyses(paths)


def _fig2(paths, out, fig):
    from .analysis.probe_figures import fig2

    return fig2(_probes(paths), out, fig["segments"], fig["easiest"])


def _fig3(paths, out, fig):
    from .analysis.comparison_figures import fig3

    return fig3(_probes(paths), out, fig["removed"])


def _table1(paths, out, fig):
    from .analysis.comparison_figures import table1

    return table1(_probes(paths), out, fig["removed"])


def _simclr(paths, out, fig):
    from .analysis.comparison_figures import simclr

    return simclr(_probes(paths), out, fig["policies"])


def _fig_methods(paths, out, fig):
    from .analysis.comparison_figures import fig_methods

    return fig_methods(_probes(paths, extra_metrics=("train_images_per_s",)), out, fig["policies"], fig["band"])


def _fig_dynamics(paths, out, fig):
    from .analysis.dynamics_figures import fig_dynamics, load_training

    return fig_dynamics(load_training(paths), out)


# an analysis figure's keyword arguments are its section's keys (its temperatures chose its runs)
def _settings(fig):
    return {k: v for k, v in fig.items() if k != "temperatures"}


def _fig4(paths, out, fig):
    from .analysis.hardness_figures import fig4

    return fig4(_pairs(paths)[0], out, **_settings(fig))


def _fig5(paths, out, fig):
    from .analysis.hardness_figures import fig5

    return fig5(_pairs(paths)[0], out, **_settings(fig))


def _fig6(paths, out, fig):
    from .analysis.hardness_figures import fig6

    return fig6(_pairs(paths)[0], out, **_settings(fig))


def _tables_a4_a6(paths, out, fig):
    from .analysis.class_pair_tables import tables_a4_a6

    pairs, names = _pairs(paths)
    return tables_a4_a6(pairs, out, class_names=names, **_settings(fig))


# ------------------------------------------------------------------ the records

register(Figure("fig2", "Figure 2", _fig2, policy_keys=("segments", "easiest")))
register(Figure("fig3", "Figure 3", _fig3, policy_keys=("removed",)))
register(Figure("table1", "Table 1", _table1, policy_keys=("removed",)))
# Section 4: the baseline runs, analysed (pairs.parquet) instead of probed
register(Figure("fig4", "Figure 4", _fig4, source="analyses", mem_mb=8000))
register(Figure("fig5", "Figure 5", _fig5, source="analyses", mem_mb=8000))
register(Figure("fig6", "Figure 6", _fig6, source="analyses", mem_mb=8000))
register(Figure("tables_a4_a6", "Tables A4-A6", _tables_a4_a6, source="analyses", similarity=True, mem_mb=8000))
# appendix A.2: the same question with SimCLR's in-batch negatives
register(Figure("simclr", "Appendix A.2 (SimCLR)", _simclr, policy_keys=("policies",), method="simclr"))
# the neighbouring methods beside our best band and the baseline
register(Figure("fig_methods", "Methods", _fig_methods, policy_keys=("band", "policies")))
# beyond the paper: which negatives the loss learns from as training goes, for Figure 2's runs
register(Figure("fig_dynamics", "Training dynamics", _fig_dynamics, source="training", runs_of="fig2", dynamics=True))
# how every other probed figure's runs trained, beside it in the report
for _name in ("fig3", "table1", "simclr", "fig_methods"):
    register(Figure(f"{_name}_curves", REGISTRY[_name].category, _fig_dynamics, source="training", runs_of=_name))
