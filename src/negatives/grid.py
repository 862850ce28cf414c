"""Which runs each figure needs, computed in one place from the config.

The workflow (``workflow/rules/common.smk``) asks this module for the files a
figure target plots, so ``snakemake fig2`` builds exactly the runs fig2 uses,
and two figures that share a run share its files.  Paths follow
docs/INTERFACES.md.
"""

from __future__ import annotations

from dataclasses import dataclass

from .policies.registry import parse_policy

__all__ = ["FIGURES", "ANALYSES", "Run", "figure_policies", "runs_for", "random_init_seeds", "random_init_dir",
           "figure_method", "figure_temperatures", "figure_probes", "figure_pairs", "figure_inputs",
           "similarity_file", "figure_outputs"]

#: figure -> the policy strings it trains, read from ``cfg["figures"][figure]``;
#: adding a figure here adds it to ``FIGURES`` and to ``rule all``
_POLICIES = {
    "fig2": lambda fig: ["all", *fig["segments"], *fig["easiest"]],
    "fig3": lambda fig: ["all", *fig["removed"]],
    "table1": lambda fig: ["all", *fig["removed"]],
    # Section 4: the baseline runs, analysed (pairs.parquet) instead of probed
    "fig4": lambda fig: ["all"],
    "fig5": lambda fig: ["all"],
    "fig6": lambda fig: ["all"],
    "tables_a4_a6": lambda fig: ["all"],
    # appendix A.2: the same question with SimCLR's in-batch negatives
    "simclr": lambda fig: ["all", *fig["policies"]],
    # the neighbouring methods beside our best band and the baseline
    "fig_methods": lambda fig: ["all", fig["band"], *fig["policies"]],
}

#: figures trained with another method than the config's ``method``
_METHODS = {"simclr": "simclr"}

#: figures drawn from the runs' Section 4 analyses rather than their probes
ANALYSES = ("fig4", "fig5", "fig6", "tables_a4_a6")

#: every figure target the project builds so far (``rule all`` builds them all)
FIGURES = tuple(_POLICIES)

#: file types every figure writes beside each other
FIGURE_EXTENSIONS = ("pdf", "png", "csv")


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


def _check_figure(figure: str) -> None:
    if figure not in FIGURES:
        raise ValueError(f"unknown figure {figure!r}; allowed: {', '.join(FIGURES)}")


def figure_policies(cfg: dict, figure: str) -> list[str]:
    """Canonical names of the policies a figure trains, baseline first, no duplicates."""
    _check_figure(figure)
    texts = _POLICIES[figure](cfg["figures"].get(figure, {}))
    names = (parse_policy(t).name for t in texts)
    return list(dict.fromkeys(names))


def figure_method(cfg: dict, figure: str) -> str:
    """The method a figure's runs train with (``simclr`` for appendix A.2, else the config's)."""
    _check_figure(figure)
    return _METHODS.get(figure, cfg["method"])


def figure_temperatures(cfg: dict, figure: str) -> list[float]:
    """The temperatures a figure's runs train at: its own
    ``figures.NAME.temperatures`` when given, else the config's."""
    _check_figure(figure)
    return list(cfg["figures"].get(figure, {}).get("temperatures", cfg["temperatures"]))


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
    if figure in ANALYSES:
        raise ValueError(f"{figure} is drawn from analyses (figure_pairs), not from probes")
    results = cfg.get("results", "results")
    trained = [f"{run.dir(results)}/probe.json" for run in runs_for(cfg, figure)]
    untrained = [f"{random_init_dir(cfg, s, results)}/probe.json" for s in random_init_seeds(cfg)]
    return trained + untrained


def figure_pairs(cfg: dict, figure: str) -> list[str]:
    """Paths of the ``analysis/pairs.parquet`` of every run a Section 4 figure uses."""
    if figure not in ANALYSES:
        _check_figure(figure)
        raise ValueError(f"{figure} is drawn from probes (figure_probes), not from analyses")
    results = cfg.get("results", "results")
    return [f"{run.dir(results)}/analysis/pairs.parquet" for run in runs_for(cfg, figure)]


def figure_inputs(cfg: dict, figure: str) -> list[str]:
    """The files ``python -m negatives figure`` draws a figure from: its probes,
    or its analyses (and, for the tables, the similarity file naming the classes)."""
    if figure not in ANALYSES:
        return figure_probes(cfg, figure)
    return figure_pairs(cfg, figure) + ([similarity_file(cfg)] if figure == "tables_a4_a6" else [])


def similarity_file(cfg: dict) -> str:
    """The dataset's class-by-class WordNet similarity matrix: every analysis
    reads it, and the tables take the class names from its header."""
    return f"{cfg.get('results', 'results')}/data/{cfg['dataset']}/wordnet_similarity.tsv"


def figure_outputs(cfg: dict, figure: str) -> list[str]:
    """The files a figure target writes: ``results/figures/{figure}.{pdf,png,csv}``."""
    _check_figure(figure)
    results = cfg.get("results", "results")
    return [f"{results}/figures/{figure}.{ext}" for ext in FIGURE_EXTENSIONS]
