"""Which negatives the loss learns from, as training goes: per epoch, for the
baseline and Figure 2's band runs, the gradient's share of the hardest and
easiest negatives (:mod:`negatives.methods.shares`), the loss and the kNN
monitor, from each run's ``train_log.csv``; and, where a run's
``analysis/dynamics.csv`` is given, the Section 4 quantities measured at
chosen epochs.  Beyond the paper, which measures Section 4 once, on the
final encoder of the baseline (Cai et al. 2020, arXiv:2010.06682)."""

from __future__ import annotations

import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from ..policies.registry import parse_policy  # noqa: E402
from .plotting import write_figure  # noqa: E402

__all__ = ["RUN_PATH", "load_training", "dynamics_table", "fig_dynamics"]

#: a run's file: ``.../{dataset}/{method}/{policy}/t{temperature}/seed{seed}/[analysis/]NAME.csv``
RUN_PATH = re.compile(
    r"(?P<dataset>[^/]+)/(?P<method>[^/]+)/(?P<policy>[^/]+)/t(?P<temperature>[^/]+)/seed(?P<seed>\d+)/"
    r"(?:analysis/)?(?P<file>train_log|dynamics)\.csv$"
)

_IDENTITY = ("dataset", "method", "policy", "temperature", "seed")

#: the Section 4 panels drawn from analysis/dynamics.csv, in order: (column, title)
SECTION4_PANELS = (
    ("s4_same_class_hardest_5", "same class, hardest 5% (Fig. 4a)"),
    ("s4_wordnet_hardest_5", "WordNet similarity, hardest 5% (Fig. 4b)"),
    ("s4_cosine_decile_0", "mean cosine, easiest decile (Fig. 5c)"),
    ("s4_hard_spread", "spread of 'how often hard' (Fig. 6)"),
)

#: the panels drawn from the training log, in order: (column, title)
LOG_PANELS = (
    ("share_hardest_5", "gradient share, hardest 5%"),
    ("share_hardest_1", "gradient share, hardest 1%"),
    ("share_easiest_50", "gradient share, easiest 50%"),
    ("loss", "training loss"),
    ("knn_top1", "kNN monitor top-1 (%)"),
)


def load_training(paths) -> pd.DataFrame:
    """Every run's per-epoch rows: its ``train_log.csv`` and, if among ``paths``,
    its ``analysis/dynamics.csv`` (merged on the epoch); the run's identity
    read from its path.  A path that is no run's file is refused naming it."""
    frames: dict[tuple, dict[str, pd.DataFrame]] = {}
    for path in map(str, paths):
        m = RUN_PATH.search(Path(path).as_posix())
        if m is None:
            raise ValueError(f"{path}: not a run's train_log.csv or analysis/dynamics.csv")
        run = (m["dataset"], m["method"], m["policy"], float(m["temperature"]), int(m["seed"]))
        try:
            frames.setdefault(run, {})[m["file"]] = pd.read_csv(path)
        except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as e:
            raise ValueError(f"{path}: cannot be read as a table ({e})") from None
    rows = []
    for (dataset, method, policy, temperature, seed), files in frames.items():
        if "train_log" not in files:
            raise ValueError(f"run {method}/{policy}/t{temperature:g}/seed{seed}: its train_log.csv is not given")
        table = files["train_log"]
        if "dynamics" in files:  # Section 4 at the saved epochs, its columns marked s4_
            extra = files["dynamics"].drop(columns=[c for c in _IDENTITY if c in files["dynamics"]])
            extra = extra.rename(columns=lambda c: c if c == "epoch" else f"s4_{c}")
            table = table.merge(extra, on="epoch", how="outer")
        rows.append(table.assign(dataset=dataset, method=method, policy=policy, temperature=temperature, seed=seed))
    return pd.concat(rows, ignore_index=True)


def dynamics_table(runs: pd.DataFrame, columns) -> pd.DataFrame:
    """Mean, std (ddof=1, NaN for one seed), min, max and n over seeds of
    each column per (policy, temperature, epoch); epochs without a value are left out."""
    long = runs.melt(
        id_vars=["policy", "temperature", "seed", "epoch"], value_vars=list(columns), var_name="quantity"
    ).dropna(subset=["value"])
    return (
        long.groupby(["quantity", "policy", "temperature", "epoch"], sort=False)["value"]
        .agg(["mean", "std", "min", "max", "count"])
        .rename(columns={"count": "n"})
        .reset_index()
    )


def _order(policies) -> list[str]:
    """The baseline first, then the bands hardest first (by their band's upper end, then its lower)."""

    def key(name):
        p = parse_policy(name).policy
        return (name != "all", -getattr(p, "hi_pct", 0), -getattr(p, "lo_pct", 0), name)

    return sorted(policies, key=key)


def _runs_without(runs: pd.DataFrame, column: str) -> list[str]:
    """The runs (``policy/t.../seed...``) none of whose epochs has ``column``."""
    has = runs[column].notna() if column in runs else pd.Series(False, index=runs.index)
    per_run = has.groupby([runs.policy, runs.temperature, runs.seed]).any()
    return [f"{p}/t{t:g}/seed{s}" for (p, t, s), ok in per_run.items() if not ok]


def fig_dynamics(runs: pd.DataFrame, out_prefix) -> pd.DataFrame:
    """The training dynamics of every run given; returns the table written to CSV.

    One panel per quantity (the training log's gradient shares, loss and kNN
    monitor; then, where ``analysis/dynamics.csv`` was read, Section 4's
    same-class share and WordNet similarity of the hardest 5%, the easiest
    decile's mean cosine and the hard-frequency spread; every column of it
    in the CSV),
    epochs on x, one line per policy and temperature (the mean over seeds,
    shaded from the lowest to the highest seed); runs whose logs have no
    gradient shares (trained before the log had them) are named at the
    bottom, not left out silently.  The CSV holds every run's
    every number, drawn or not (``quantity, policy, temperature, epoch, seed, value``) and
    the summary over seeds (rows with ``seed`` empty: mean, std, min, max, n).
    """
    panels = [(c, t) for c, t in (*LOG_PANELS, *SECTION4_PANELS) if c in runs and runs[c].notna().any()]
    if not panels:
        raise ValueError("the runs' logs have no gradient shares, loss or Section 4 columns to draw")
    # the CSV: every measured column, drawn or not (the other shares: 0.1%, 10%, synthetic)
    columns = list(dict.fromkeys([c for c, _ in panels] + [c for c in runs if c.startswith(("share_", "s4_"))]))
    summary = dynamics_table(runs, columns)
    cols = min(3, len(panels))
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    colours = dict(zip(_order(runs.policy.unique()), plt.get_cmap("tab10").colors))
    for ax, (column, title) in zip(axes.flat, panels):
        part = summary[summary.quantity == column]
        for (policy, temperature), line in part.groupby(["policy", "temperature"], sort=False):
            label = policy if runs.temperature.nunique() == 1 else f"{policy}, t{temperature:g}"
            ax.plot(line.epoch, line["mean"], marker=".", color=colours[policy], label=label)
            ax.fill_between(line.epoch, line["min"], line["max"], color=colours[policy], alpha=0.15, linewidth=0)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    order = [labels.index(p) for p in _order(labels) if p in labels] if runs.temperature.nunique() == 1 else None
    if order is not None:
        handles, labels = [handles[i] for i in order], [labels[i] for i in order]
    fig.legend(handles, labels, loc="lower center", ncol=min(6, len(labels)), fontsize=8, frameon=False)
    lacking = _runs_without(runs, "share_hardest_5")
    if lacking:  # runs trained before the log had the shares: said, not silently left out
        fig.text(0.01, 0.01, f"no gradient shares in the log of {', '.join(lacking)}", fontsize=7, color="0.3")
    seeds = runs.seed.nunique()
    fig.suptitle(
        f"Which negatives the loss learns from, as training goes ({runs.method.iloc[0]}, {runs.dataset.iloc[0]}; "
        f"mean of {seeds} seed{'s' * (seeds > 1)}, shaded: lowest to highest)",
        fontsize=10,
    )
    fig.tight_layout(rect=(0, 0.06, 1, 0.95))
    every = runs.melt(
        id_vars=["policy", "temperature", "seed", "epoch"], value_vars=columns, var_name="quantity"
    ).dropna(subset=["value"])  # an epoch without it (the kNN monitor, Section 4 between saved epochs)
    table = pd.concat([every, summary], ignore_index=True)[
        ["quantity", "policy", "temperature", "epoch", "seed", "value", "mean", "std", "min", "max", "n"]
    ]
    return write_figure(fig, table, out_prefix)
