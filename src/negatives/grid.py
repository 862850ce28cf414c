"""Which runs each figure needs, computed in one place from the config and
the figure's record (:mod:`negatives.figure_registry`).

The workflow (``workflow/rules/common.smk``) asks this module for the files a
figure target plots, so ``snakemake fig2`` builds exactly the runs fig2 uses,
and two figures that share a run share its files.  Paths follow
docs/INTERFACES.md.
"""

from __future__ import annotations

from dataclasses import dataclass

from .figure_registry import REGISTRY, record
from .policies.registry import parse_policy

__all__ = [
    "FIGURES",
    "ANALYSES",
    "Run",
    "figure_policies",
    "runs_for",
    "random_init_seeds",
    "random_init_dir",
    "figure_method",
    "figure_temperatures",
    "figure_probes",
    "figure_pairs",
    "figure_inputs",
    "similarity_file",
    "figure_prefix",
    "figure_outputs",
]

#: every figure target the project builds (``rule all`` builds them all), in the registry's order
FIGURES = tuple(REGISTRY)

#: figures drawn from the runs' Section 4 analyses rather than their probes
ANALYSES = tuple(name for name, fig in REGISTRY.items() if fig.source == "analyses")


@dataclass(frozen=True)
class Run:
    """One pretraining run; ``policy`` is the canonical policy name."""

    dataset: str
    method: str
    policy: str
    temperature: float
    seed: int

    def dir(self, results: str = "results") -> str:
        return f"{results}/{self.dataset}/{self.method}/{self.policy}/t{self.temperature:g}/seed{self.seed}"


def figure_policies(cfg: dict, figure: str) -> list[str]:
    """Canonical names of the policies a figure trains, baseline first, no duplicates."""
    owner = _owner(figure)
    texts = record(owner).policies(cfg["figures"].get(owner, {}))
    names = (parse_policy(t).name for t in texts)
    return list(dict.fromkeys(names))


def figure_method(cfg: dict, figure: str) -> str:
    """The method a figure's runs train with: its record's (``simclr`` for appendix A.2), else the config's."""
    return record(_owner(figure)).method or cfg["method"]


def figure_temperatures(cfg: dict, figure: str) -> list[float]:
    """The temperatures a figure's runs train at: its own (or, with
    ``runs_of``, that figure's) ``figures.NAME.temperatures`` when given, else the config's."""
    return list(cfg["figures"].get(_owner(figure), {}).get("temperatures", cfg["temperatures"]))


def _owner(figure: str) -> str:
    """The figure whose runs ``figure`` draws: its ``runs_of``, else itself."""
    return record(figure).runs_of or figure


def runs_for(cfg: dict, figure: str) -> list[Run]:
    """Every training run a figure plots: each policy at each temperature and seed."""
    method = figure_method(cfg, figure)
    return [
        Run(cfg["dataset"], method, policy, float(t), int(seed))
        for policy in figure_policies(cfg, figure)
        for t in figure_temperatures(cfg, figure)
        for seed in cfg["seeds"]
    ]


def random_init_seeds(cfg: dict) -> list[int]:
    """Seeds of the untrained reference encoders (one per training seed)."""
    return [int(s) for s in cfg["seeds"]]


def random_init_dir(cfg: dict, seed: int, results: str | None = None) -> str:
    """The untrained encoder of ``seed``; one for every method, since the
    encoder's initialisation does not depend on it (it lies under the
    config's ``method``)."""
    results = cfg.get("results", "results") if results is None else results
    return f"{results}/{cfg['dataset']}/{cfg['method']}/random-init/seed{seed}"


def figure_probes(cfg: dict, figure: str) -> list[str]:
    """Paths of every probe.json a figure plots: training runs, then random init."""
    if record(figure).source != "probes":
        raise ValueError(f"{figure} is drawn from its runs' {record(figure).source}, not from probes")
    results = cfg.get("results", "results")
    trained = [f"{run.dir(results)}/probe.json" for run in runs_for(cfg, figure)]
    untrained = [f"{random_init_dir(cfg, s, results)}/probe.json" for s in random_init_seeds(cfg)]
    return trained + untrained


def figure_pairs(cfg: dict, figure: str) -> list[str]:
    """Paths of the ``analysis/pairs.parquet`` of every run a Section 4 figure uses."""
    if record(figure).source != "analyses":
        raise ValueError(f"{figure} is drawn from its runs' {record(figure).source}, not from analyses")
    results = cfg.get("results", "results")
    return [f"{run.dir(results)}/analysis/pairs.parquet" for run in runs_for(cfg, figure)]


def figure_dynamics(cfg: dict, figure: str) -> list[str]:
    """Paths of the ``analysis/dynamics.csv`` (Section 4 at every saved epoch)
    of every trained run a figure uses, whether it plots probes or analyses."""
    results = cfg.get("results", "results")
    return [f"{run.dir(results)}/analysis/dynamics.csv" for run in runs_for(cfg, figure)]


def figure_inputs(cfg: dict, figure: str) -> list[str]:
    """The files ``python -m negatives figure`` draws a figure from: its probes,
    its runs' training logs, or its analyses (and, where its record says so,
    the similarity file naming the classes)."""
    fig = record(figure)
    if fig.source == "probes":
        return figure_probes(cfg, figure)
    if fig.source == "training":
        logs = [f"{run.dir(cfg.get('results', 'results'))}/train_log.csv" for run in runs_for(cfg, figure)]
        return logs + (figure_dynamics(cfg, figure) if fig.dynamics else [])
    return figure_pairs(cfg, figure) + ([similarity_file(cfg)] if fig.similarity else [])


def similarity_file(cfg: dict) -> str:
    """The dataset's class-by-class WordNet similarity matrix: every analysis
    reads it, and the tables take the class names from its header."""
    return f"{cfg.get('results', 'results')}/data/{cfg['dataset']}/wordnet_similarity.tsv"


def figure_prefix(cfg: dict, figure: str) -> str:
    """Where a figure's files go, less their extension: ``results/figures/{figure}``."""
    record(figure)
    return f"{cfg.get('results', 'results')}/figures/{figure}"


def figure_outputs(cfg: dict, figure: str) -> list[str]:
    """The files a figure target writes: its prefix + each of its record's extensions (pdf, png, csv)."""
    return [f"{figure_prefix(cfg, figure)}.{ext}" for ext in record(figure).extensions]
