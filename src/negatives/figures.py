"""Figures: tidy tables of probe results (Figure 2) or of the Section 4
analyses (Figures 4-6, Tables A4-A6) in, figure files out.

Every figure writes ``{out_prefix}.pdf`` (paper), ``.png`` (report) and
``.csv`` (the numbers behind it); each plotted point is the mean over seeds
with a standard-deviation error bar.
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
import torch  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from .atomic import atomic_write
from .policies import Band, parse_policy  # noqa: E402
from .ring import Ring  # noqa: E402

__all__ = ["EVALUATIONS", "RANDOM_INIT", "load_probes", "summarize", "fig2", "against_baseline", "fig3", "table1",
           "simclr", "fig_methods", "load_analyses", "fig4", "fig5",
           "fig6", "tables_a4_a6", "build"]

#: probe.json metric prefix -> row label
EVALUATIONS = {"linear": "linear probe", "fewshot": "few-label probe", "knn": "kNN"}
RANDOM_INIT = "random-init"
GROUP = ["policy", "temperature", "metric"]


def load_probes(paths) -> pd.DataFrame:
    """One row per ``probe.json`` (its fields as columns, plus ``path``).
    Missing accuracies (``null``, e.g. top-5 with <= 5 classes) become NaN,
    and so does the random-init runs' ``temperature``."""
    rows = [{**json.loads(Path(p).read_text()), "path": str(p)} for p in paths]
    df = pd.DataFrame(rows)
    for col in df.columns:
        if col.endswith(("_top1", "_top5")) or col == "temperature":
            df[col] = pd.to_numeric(df[col]).astype(float)
    return df


def summarize(df: pd.DataFrame, metrics) -> pd.DataFrame:
    """Mean, std (ddof=1) and n over seeds per (policy, temperature, metric).

    One seed gives ``std`` NaN, never 0; ``n`` counts the non-missing values.
    Raises ``ValueError`` when a (policy, temperature, seed) appears twice.
    """
    dup = df.duplicated(["policy", "temperature", "seed"], keep=False)
    if dup.any():
        raise ValueError(f"duplicate runs (policy, temperature, seed):\n{df.loc[dup, ['policy', 'temperature', 'seed']]}")
    long = df.melt(id_vars=["policy", "temperature", "seed"], value_vars=list(metrics), var_name="metric")
    return (long.groupby(GROUP, dropna=False, sort=False)["value"]
            .agg(mean="mean", std=lambda v: v.std(ddof=1), n="count").reset_index())


# ------------------------------------------------------------------ helpers

def _canonical(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` with every policy under its canonical name (random-init as is)."""
    return df.assign(policy=df["policy"].map(lambda p: p if p == RANDOM_INIT else parse_policy(p).name))


def _keep_band(name: str) -> Band:
    p = parse_policy(name)
    if not (isinstance(p, Band) and p.action == "keep"):
        raise ValueError(f"figure 2 plots 'keep[a,b)' policies, got {name!r}")
    return p


def _pct(x: float) -> str:
    return f"{x:g}"


def _write(fig, table: pd.DataFrame, out_prefix) -> pd.DataFrame:
    """Write ``out_prefix`` + ``.pdf``/``.png`` (``fig``, then closed) and ``.csv`` (``table``), each atomically."""
    prefix = Path(out_prefix)
    try:
        for ext in ("pdf", "png"):
            atomic_write(prefix.with_name(prefix.name + "." + ext), lambda tmp: fig.savefig(tmp, format=ext, dpi=150))
    finally:
        plt.close(fig)
    atomic_write(prefix.with_name(prefix.name + ".csv"), lambda tmp: table.to_csv(tmp, index=False))
    return table


def _single(df: pd.DataFrame, col: str):
    vals = df[col].dropna().unique() if col in df else []
    if len(vals) != 1:
        raise ValueError(f"a figure shows one {col}; the probes have {list(vals)}")
    return vals[0]


# ------------------------------------------------------------------ figure 2

def fig2(df: pd.DataFrame, out_prefix, segments: list[str], easiest: list[str], baseline: str = "all") -> pd.DataFrame:
    """Paper Figure 2 for each evaluation; returns the table written to CSV.

    Columns: (a) top-1 and (b) top-5 of runs trained on one difficulty segment
    (``keep[a,b)``, hardest first), (c) top-1 and (d) top-5 of runs trained on
    the easiest x% (``keep[0,x)``, x increasing).  Rows: linear probe,
    few-label probe, kNN.  Every panel also shows the ``baseline`` policy
    (line, shaded +-std) and the random-init encoder (dashed).  One colour and
    marker per temperature.  Writes ``out_prefix`` + ``.pdf``/``.png``/``.csv``.
    """
    seg = sorted(((p, _keep_band(p)) for p in segments), key=lambda pb: -pb[1].lo_pct)
    easy = sorted(((p, _keep_band(p)) for p in easiest), key=lambda pb: pb[1].hi_pct)
    bad = [p for p, b in easy if b.lo_pct != 0]
    if bad:
        raise ValueError(f"figure 2c-d plots the easiest x% ('keep[0,x)'), got {bad}")
    panels = {  # panel -> (policy -> x label, top-k)
        "a": ({p.name: f"{_pct(p.lo_pct)}-{_pct(p.hi_pct)}%" for _, p in seg}, "top1"),
        "b": ({p.name: f"{_pct(p.lo_pct)}-{_pct(p.hi_pct)}%" for _, p in seg}, "top5"),
        "c": ({p.name: f"0-{_pct(p.hi_pct)}%" for _, p in easy}, "top1"),
        "d": ({p.name: f"0-{_pct(p.hi_pct)}%" for _, p in easy}, "top5"),
    }
    canon = {p: parse_policy(p).name for p in segments + easiest + [baseline]}
    df = _canonical(df)
    trained = df[df.policy != RANDOM_INIT]
    temps = sorted(trained.temperature.dropna().unique())
    have = set(zip(df.policy, df.temperature.fillna(-1.0)))
    missing = [f"{p} (t={t:g})" for p in dict.fromkeys(canon.values()) for t in temps or [np.nan] if (p, t) not in have]
    if RANDOM_INIT not in set(df.policy):
        missing.append(RANDOM_INIT)
    if missing:
        raise ValueError(f"figure 2 needs probes of policies missing from the table: {', '.join(missing)}")

    metrics = [f"{e}_{k}" for e in EVALUATIONS for k in ("top1", "top5") if f"{e}_{k}" in df]
    wanted = set(canon.values()) | {RANDOM_INIT}
    stats = summarize(df[df.policy.isin(wanted)], metrics)

    rows = []
    for panel, (labels, top) in panels.items():
        for ev in EVALUATIONS:
            s = stats[stats.metric == f"{ev}_{top}"]
            for policy, x in [*labels.items(), (canon[baseline], "baseline"), (RANDOM_INIT, "random init")]:
                for r in s[s.policy == policy].itertuples():
                    rows.append(dict(panel=panel, evaluation=ev, metric=r.metric, policy=policy,
                                     temperature=r.temperature, x=x, mean=r.mean, std=r.std, n=r.n))
    table = pd.DataFrame(rows, columns=["panel", "evaluation", "metric", "policy", "temperature", "x", "mean", "std", "n"])

    title = (f"Figure 2 - {_single(df, 'dataset')} / {_single(df, 'method')} / {_single(trained, 'epochs'):g} epochs: "
             f"mean $\\pm$ std over {_seed_range(table)} seeds")
    names = dict(EVALUATIONS)
    if "fewshot_labels_per_class" in df:
        names["fewshot"] += f" ({_single(trained, 'fewshot_labels_per_class'):g}/class)"
    return _write(_draw_fig2(table, panels, temps, title, names), table, out_prefix)


def _seed_range(table: pd.DataFrame) -> str:
    n = table.n[table.n > 0]
    lo, hi = int(n.min()), int(n.max())
    return f"{lo}" if lo == hi else f"{lo}-{hi}"


def _draw_fig2(table: pd.DataFrame, panels: dict, temps: list, title: str, names: dict):
    colours = dict(zip(temps, sns.color_palette("colorblind", len(temps))))
    markers = dict(zip(temps, "osD^vP*X"))
    xlabel = {"a": "segment of negatives used (difficulty percentile)", "c": "easiest negatives used (percentile)"}
    with sns.axes_style("whitegrid"):
        fig, axes = plt.subplots(len(names), len(panels), figsize=(4.2 * len(panels), 3.3 * len(names)),
                                 squeeze=False)
    for i, ev in enumerate(names):
        for j, (panel, (labels, top)) in enumerate(panels.items()):
            ax = axes[i, j]
            t = table[(table.panel == panel) & (table.evaluation == ev)]
            ax.set_title(f"({panel}) {names[ev]}, top-{top[-1]}", fontsize=10)
            if t["mean"].isna().all():
                ax.text(0.5, 0.5, f"top-{top[-1]} not reported\n(too few classes)" if top == "top5" else "no data",
                        ha="center", va="center", transform=ax.transAxes, color="grey")
                ax.set_xticks([])
                continue
            ref = t[t.x == "random init"]
            for r in ref.itertuples():
                ax.axhline(r.mean, color="0.35", ls="--", lw=1.2)
            for k, temp in enumerate(temps):
                c = colours[temp]
                base = t[(t.x == "baseline") & (t.temperature == temp)]
                for r in base.itertuples():
                    ax.axhline(r.mean, color=c, lw=1.2)
                    if np.isfinite(r.std):
                        ax.axhspan(r.mean - r.std, r.mean + r.std, color=c, alpha=0.15, lw=0)
                pts = t[t.policy.isin(labels) & (t.temperature == temp)].set_index("policy").reindex(list(labels))
                dx = (k - (len(temps) - 1) / 2) * 0.12
                ax.errorbar(np.arange(len(labels)) + dx, pts["mean"], yerr=pts["std"], color=c, marker=markers[temp],
                            ls="none", capsize=3, ms=5)
            ax.set_xticks(range(len(labels)), list(labels.values()), fontsize=8)
            ax.set_xlim(-0.5, len(labels) - 0.5)
            if j == 0 or j == 2:
                ax.set_ylabel(f"{names[ev]}\naccuracy (%)" if j == 0 else "accuracy (%)", fontsize=9)
            if i == len(names) - 1:
                ax.set_xlabel(xlabel.get(panel, xlabel["a" if panel == "b" else "c"]), fontsize=8)
    handles = [Line2D([], [], color=colours[t], marker=markers[t], ls="none", label=f"runs, t={t:g}") for t in temps]
    handles += [Line2D([], [], color=colours[t], label=f"baseline (all negatives), t={t:g}") for t in temps]
    handles += [Patch(color="0.6", alpha=0.3, label="baseline $\\pm$ std"),
                Line2D([], [], color="0.35", ls="--", label="random-init encoder")]
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 4), fontsize=9, frameon=False)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout(rect=(0, 0.06, 1, 0.97))
    return fig


# ------------------------------------------------------------------ fig3, table1, simclr: runs against the baseline

def against_baseline(df: pd.DataFrame, labels: dict[str, str], baseline: str = "all",
                     extra_metrics: tuple[str, ...] = ()) -> pd.DataFrame:
    """Each policy of ``labels`` (policy -> row label) and the baseline, per
    temperature and metric: mean, std, n over seeds, the difference of means
    to the baseline at the same temperature, and the two-sided unpaired t-test
    p-value of that difference (scipy's ``ttest_ind``; NaN with < 2 seeds a side).

    Columns: evaluation, metric, policy, label, uses_labels, temperature,
    mean, std, n, delta, p_value.  Raises naming the missing runs.
    """
    df = _canonical(df)
    baseline = parse_policy(baseline).name
    labels = {parse_policy(p).name: text for p, text in labels.items()}
    labels.setdefault(baseline, "baseline (all negatives)")
    trained = df[df.policy != RANDOM_INIT]
    temps = sorted(trained.temperature.dropna().unique())
    have = set(zip(trained.policy, trained.temperature))
    missing = [f"{p} (t={t:g})" for p in labels for t in temps or [np.nan] if (p, t) not in have]
    if missing:
        raise ValueError(f"the comparison needs probes of runs missing from the table: {', '.join(missing)}")
    trained = trained[trained.policy.isin(labels)]
    metrics = [f"{e}_{k}" for e in EVALUATIONS for k in ("top1", "top5") if f"{e}_{k}" in trained]
    metrics += [m for m in extra_metrics if m in trained]
    stats = summarize(trained, metrics).set_index(["policy", "temperature", "metric"])  # mean, std, n
    oracle = trained.groupby("policy")["uses_labels"].any() if "uses_labels" in trained else {}
    rows = []
    for metric in metrics:
        for t in temps:
            at = trained[trained.temperature == t]
            base = at.loc[at.policy == baseline, metric].dropna()
            for policy, label in labels.items():
                st = stats.loc[(policy, t, metric)]
                same = policy == baseline
                rows.append(dict(evaluation=metric.rsplit("_", 1)[0] if metric not in extra_metrics else metric,
                                 metric=metric, policy=policy, label=label,
                                 uses_labels=bool(oracle.get(policy, False)), temperature=t,
                                 mean=st["mean"], std=st["std"], n=int(st["n"]),
                                 delta=0.0 if same else st["mean"] - base.mean(),
                                 p_value=np.nan if same else _ttest(at.loc[at.policy == policy, metric].dropna(), base)))
    return pd.DataFrame(rows, columns=["evaluation", "metric", "policy", "label", "uses_labels", "temperature",
                                       "mean", "std", "n", "delta", "p_value"])


def _draw_comparison(table: pd.DataFrame, labels: list[str], title: str, xlabel: str, names: dict):
    """Rows: evaluations; columns: top-1, top-5.  x: the runs (``labels`` in
    order), one colour per temperature, baseline as a line with its std band,
    p-values against the baseline under each point."""
    temps = sorted(table.temperature.unique())
    colours, markers = _colours(temps), dict(zip(temps, "osD^vP*X"))
    tops = [k for k in ("top1", "top5") if table[table.metric.str.endswith(k)]["mean"].notna().any()]
    evals = [e for e in names if (table.evaluation == e).any()]
    speed = table[table.metric == "train_images_per_s"]
    with sns.axes_style("whitegrid"):
        fig, axes = plt.subplots(len(evals) + (not speed.empty), len(tops),
                                 figsize=(1.3 * len(labels) * len(tops) + 3, 3.2 * (len(evals) + (not speed.empty))),
                                 squeeze=False)
    base_label = table.loc[table.delta.eq(0) & table.p_value.isna(), "label"].iloc[0]
    points = [x for x in labels if x != base_label]
    for i, ev in enumerate(evals):
        for j, top in enumerate(tops):
            ax = axes[i, j]
            t = table[table.metric == f"{ev}_{top}"]
            ax.set_title(f"{names[ev]}, top-{top[-1]}", fontsize=10)
            for k, temp in enumerate(temps):
                c = colours[temp]
                at = t[t.temperature == temp].set_index("label")
                if base_label in at.index:
                    b = at.loc[base_label]
                    ax.axhline(b["mean"], color=c, lw=1.2)
                    if np.isfinite(b["std"]):
                        ax.axhspan(b["mean"] - b["std"], b["mean"] + b["std"], color=c, alpha=0.15, lw=0)
                pts = at.reindex(points)
                x = np.arange(len(points)) + (k - (len(temps) - 1) / 2) * 0.15
                ax.errorbar(x, pts["mean"], yerr=pts["std"], color=c, marker=markers[temp], ls="none", capsize=3, ms=5)
                for xi, (m, sd, pv) in zip(x, pts[["mean", "std", "p_value"]].to_numpy()):
                    if np.isfinite(m):
                        ax.annotate(_p_text(pv).replace("p = ", "p="), (xi, m - (sd if np.isfinite(sd) else 0)),
                                    textcoords="offset points", xytext=(0, -11), ha="center", fontsize=6, color=c)
            ax.set_xticks(range(len(points)), points, fontsize=8, rotation=15)
            ax.set_xlim(-0.6, len(points) - 0.4)
            ax.set_ylabel("accuracy (%)", fontsize=9)
            if i == len(evals) - 1:
                ax.set_xlabel(xlabel, fontsize=8)
    if not speed.empty:  # the training cost of each run (methods figure)
        ax = axes[-1, 0]
        for k, temp in enumerate(temps):
            at = speed[speed.temperature == temp].set_index("label").reindex(labels)
            x = np.arange(len(labels)) + (k - (len(temps) - 1) / 2) * 0.15
            ax.errorbar(x, at["mean"], yerr=at["std"], color=colours[temp], marker=markers[temp], ls="none", capsize=3)
        ax.set_xticks(range(len(labels)), labels, fontsize=8, rotation=15)
        ax.set_title("training cost", fontsize=10)
        ax.set_ylabel("images / s (median epoch)", fontsize=9)
        for ax in axes[-1, 1:]:
            ax.set_visible(False)
    handles = [Line2D([], [], color=colours[t], marker=markers[t], ls="none", label=f"runs, t={t:g}") for t in temps]
    handles += [Line2D([], [], color=colours[t], label=f"{base_label}, t={t:g}") for t in temps]
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 4), fontsize=9, frameon=False)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout(rect=(0, 0.07, 1, 0.96))
    return fig


def _comparison_figure(df: pd.DataFrame, out_prefix, labels: dict[str, str], name: str, xlabel: str,
                       extra_metrics: tuple[str, ...] = ()) -> pd.DataFrame:
    table = against_baseline(df, labels, extra_metrics=extra_metrics)
    trained = df[df.policy != RANDOM_INIT]
    title = (f"{name} - {_single(trained, 'dataset')} / {_single(trained, 'method')} / "
             f"{_single(trained, 'epochs'):g} epochs: mean $\\pm$ std over {_seed_range(table)} seeds, "
             "p: unpaired t-test against the baseline")
    order = list(dict.fromkeys(table.label))
    names = dict(EVALUATIONS)
    return _write(_draw_comparison(table, order, title, xlabel, names), table, out_prefix)


def _removed_band(name: str) -> Band:
    p = parse_policy(name)
    if not (isinstance(p, Band) and p.action == "drop" and p.hi_pct == 100):
        raise ValueError(f"figure 3 plots the removal of the hardest x%, 'drop[a,100)'; got {name!r}")
    return p


def fig3(df: pd.DataFrame, out_prefix, removed: list[str]) -> pd.DataFrame:
    """Paper Figure 3: every negative but the hardest x% (``drop[a,100)``)
    against the baseline (all negatives), at each temperature, top-1 and top-5,
    with the p-value of each difference.  x: the most difficult negatives
    included (percentile a; the baseline is 100)."""
    bands = sorted((_removed_band(p) for p in removed), key=lambda b: b.lo_pct)
    labels = {b.name: f"up to {_pct(b.lo_pct)}%" for b in bands}
    labels["all"] = "baseline (all negatives)"
    return _comparison_figure(df, out_prefix, labels, "Figure 3",
                              "most difficult negatives included (percentile); the hardest are removed")


def _removal_label(name: str) -> str:
    p = parse_policy(name)
    inner = getattr(p, "inner", p)
    if isinstance(inner, Band):
        text = f"remove hardest {_pct(100 - inner.lo_pct)}%" if inner.hi_pct == 100 else f"remove {inner.name}"
    elif getattr(inner, "band", None) is None:
        text = "remove same-class"
    else:
        b = inner.band
        band = f"hardest {_pct(100 - b.lo_pct)}%" if b.hi_pct == 100 else b.name
        text = f"remove {band} & {inner.relation.replace('-class', ' class')}"
    if p.mode == "replace":
        text += " (replaced)"
    return text + (" [labels]" if p.uses_labels else "")


def table1(df: pd.DataFrame, out_prefix, removed: list[str]) -> pd.DataFrame:
    """Paper Table 1: removing same-class negatives (an oracle: reads labels),
    the hardest 0.1%, and the hardest 0.1% split by same / other class, at each
    temperature, against the baseline; p-values of each difference."""
    labels = {p: _removal_label(p) for p in removed}
    labels["all"] = "baseline (all negatives)"
    return _comparison_figure(df, out_prefix, labels, "Table 1",
                              "negatives removed ([labels]: an oracle run that reads class labels)")


def simclr(df: pd.DataFrame, out_prefix, policies: list[str]) -> pd.DataFrame:
    """Appendix A.2: SimCLR trained on bands of its in-batch negatives (the
    hardest 5%, the easiest 95%) against SimCLR on all of them."""
    labels = {}
    for name in policies:
        p = parse_policy(name)
        labels[p.name] = (f"{p.action} {_pct(p.lo_pct)}-{_pct(p.hi_pct)}%" if isinstance(p, Band)
                          else _removal_label(p.name))
    labels["all"] = "baseline (all negatives)"
    return _comparison_figure(df, out_prefix, labels, "Appendix A.2 (SimCLR)", "negatives used (difficulty percentile)")


def fig_methods(df: pd.DataFrame, out_prefix, policies: list[str], band: str) -> pd.DataFrame:
    """The neighbouring methods (MoCHi, Ring, debiased and hard-weighted
    losses, curricula, ...) and our best band against the baseline, same
    data, budget and seeds: top-1 / top-5 with p-values, and each run's
    training cost (median images/s over its epochs)."""
    labels = {}
    for text in policies:
        p = parse_policy(text)
        # Wu et al.'s Ring, or their Ball (no inner ball)
        labels[p.name] = p.name + ((" (Ring)" if p.inner > 0 else " (Ball)") if isinstance(p, Ring) else "")
    labels[parse_policy(band).name] = f"{parse_policy(band).name} (band)"
    labels["all"] = "baseline (all negatives)"
    return _comparison_figure(df, out_prefix, labels, "Methods", "policy", extra_metrics=("train_images_per_s",))


# ------------------------------------------------------------------ Section 4: figures 4-6, tables A4-A6
#
# Drawn from the pairs tables of the analysed runs (``analysis.load_pairs``:
# one row per query x negative, docs/INTERFACES.md).  Every statistic is
# computed per run (temperature, seed) and then summarised over seeds (mean,
# std with ddof=1, n), one group per temperature.

#: the pairs columns these figures read
PAIRS_COLUMNS = ("query", "negative", "query_label", "negative_label", "difficulty", "percentile",
                 "same_class", "wordnet", "temperature", "run_seed")
#: pairs column -> (panel title, axis label) in figures 4 and 5
MEASURES = {"same_class": ("shared labels", "P(same class as the query)"),
            "wordnet": ("WordNet similarity", "depth of the lowest common hypernym\n(higher: more similar)"),
            "difficulty": ("dot product", "mean dot product (cosine)")}


def load_analyses(paths) -> tuple[pd.DataFrame, list[str] | None]:
    """``pairs.parquet`` files, and at most one ``wordnet_similarity.tsv`` whose
    header names the classes -> (pairs of every run, class names or None)."""
    from .analysis import load_pairs, read_identity
    from .wordnet import read_similarity

    tsv = [p for p in paths if str(p).endswith(".tsv")]
    if len(tsv) > 1:
        raise ValueError(f"expected at most one similarity .tsv, got {tsv}")
    parquet = [p for p in paths if not str(p).endswith(".tsv")]
    pairs = load_pairs(parquet)
    for key in ("dataset", "method"):  # for the titles
        values = sorted({str(read_identity(p).get(key)) for p in parquet})
        if len(values) > 1:
            raise ValueError(f"a figure shows one {key}; the analyses have {values}")
        pairs[key] = pd.Categorical.from_codes(np.zeros(len(pairs), np.int8), values)
    return pairs, read_similarity(tsv[0])[0] if tsv else None


def _runs(pairs: pd.DataFrame, figure: str) -> list[tuple[float, int, pd.DataFrame]]:
    """``[(temperature, seed, its pairs)]`` of every analysed run, sorted."""
    missing = [c for c in PAIRS_COLUMNS if c not in pairs]
    if missing:
        raise ValueError(f"{figure} needs pairs columns missing from the table: {', '.join(missing)}")
    if pairs.empty:
        raise ValueError(f"{figure}: the pairs table is empty")
    # temperatures are float32 in the table; the config's have at most 6 significant digits
    return [(float(f"{t:g}"), int(s), g) for (t, s), g in pairs.groupby(["temperature", "run_seed"], sort=True)]


def _over_seeds(per_seed: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Mean, std (ddof=1; NaN for one seed) and n of ``value`` over seeds, per ``keys`` (in order of appearance)."""
    return (per_seed.groupby(keys, sort=False, dropna=False)["value"]
            .agg(mean="mean", std=lambda v: v.std(ddof=1), n="count").reset_index())


def _ttest(a, b) -> float:
    """Two-sided unpaired t-test p-value of per-seed values (NaN with fewer than two seeds a side)."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    if min(len(a), len(b)) < 2:
        return float("nan")
    from scipy.stats import ttest_ind

    return float(ttest_ind(a, b).pvalue)


def _binned(bins: np.ndarray, n: int, values: np.ndarray) -> np.ndarray:
    """Mean of ``values`` in each of ``n`` bins (NaN where a bin is empty)."""
    counts = np.bincount(bins, minlength=n)
    sums = np.bincount(bins, weights=values, minlength=n)
    return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


def _setting(pairs: pd.DataFrame, runs) -> str:
    """``dataset / method / policy P / Q queries x N negatives`` of the analysed runs."""
    parts = [str(_single(pairs, c)) for c in ("dataset", "method") if c in pairs]
    if "policy" in pairs:
        parts.append(f"policy {_single(pairs, 'policy')}")
    g = runs[0][2]
    return " / ".join([*parts, f"{g['query'].nunique()} queries x {g['negative'].nunique()} negatives"])


def _colours(temps):
    return dict(zip(temps, sns.color_palette("colorblind", len(temps))))


def _p_text(p: float) -> str:
    return "p = n/a (< 2 seeds)" if not np.isfinite(p) else f"p = {p:.2g}"


# ------------------------------------------------------------------ figure 4

def fig4(pairs: pd.DataFrame, out_prefix, hard_cut: float = 95.0) -> pd.DataFrame:
    """Paper Figure 4: the hardest ``100 - hard_cut`` % of each query's negatives
    (percentile >= cut) against the easiest ``hard_cut`` %: (a) the fraction
    sharing the query's class, (b) mean WordNet similarity.  Per run, one value
    per group over all its pairs; bars are mean +- std over seeds, and the
    p-value is an unpaired t-test of the hard against the easy per-seed values
    (column ``p_value``, the same in both rows of a panel and temperature)."""
    groups = {False: f"easiest {_pct(hard_cut)}%", True: f"hardest {_pct(100 - hard_cut)}%"}
    runs = _runs(pairs, "figure 4")
    rows = []
    for t, seed, g in runs:
        hard = g["percentile"].to_numpy() >= hard_cut  # as analysis.hard_frequency
        for panel, col in (("a", "same_class"), ("b", "wordnet")):
            v = g[col].to_numpy(np.float64)
            for is_hard, group in groups.items():
                sel = v[hard == is_hard]
                rows.append(dict(panel=panel, measure=col, temperature=t, group=group, seed=seed,
                                 value=sel.mean() if sel.size else np.nan))
    per_seed = pd.DataFrame(rows)
    table = _over_seeds(per_seed, ["panel", "measure", "temperature", "group"])
    p = {k: _ttest(d.value[d.group == groups[True]], d.value[d.group == groups[False]])
         for k, d in per_seed.groupby(["panel", "temperature"])}
    table["p_value"] = [p[k] for k in zip(table.panel, table.temperature)]

    temps = sorted(table.temperature.unique())
    colours = _colours(temps)
    with sns.axes_style("whitegrid"):
        fig, axes = plt.subplots(1, 2, figsize=(9, 4))
    width = 0.8 / len(temps)
    for ax, (panel, col) in zip(axes, (("a", "same_class"), ("b", "wordnet"))):
        text = []
        for k, t in enumerate(temps):
            d = table[(table.panel == panel) & (table.temperature == t)].set_index("group").reindex(groups.values())
            x = np.arange(2) + (k - (len(temps) - 1) / 2) * width
            ax.bar(x, d["mean"], width * 0.9, yerr=d["std"].fillna(0), capsize=4, color=colours[t],
                   label=f"t={t:g}")
            text.append((f"t={t:g}: " if len(temps) > 1 else "") + _p_text(d.p_value.iloc[0]))
        ax.text(0.5, 0.97, "\n".join(text), transform=ax.transAxes, ha="center", va="top", fontsize=9)
        top = (table["mean"] + table["std"].fillna(0))[table.panel == panel].max()
        ax.set_ylim(0, top * (1.15 + 0.08 * len(temps)) if top > 0 else None)
        ax.set_xticks(range(2), list(groups.values()))
        ax.set_title(f"({panel}) {MEASURES[col][0]}", fontsize=10)
        ax.set_ylabel(MEASURES[col][1], fontsize=9)
    axes[0].legend(fontsize=8, title="temperature", title_fontsize=8, loc="upper left")
    fig.suptitle(f"Figure 4 - {_setting(pairs, runs)}\nhard vs easy negatives: mean $\\pm$ std over "
                 f"{_seed_range(table)} seeds, unpaired t-test across seeds", fontsize=10)
    fig.tight_layout()
    return _write(fig, table, out_prefix)


# ------------------------------------------------------------------ figure 5

def fig5(pairs: pd.DataFrame, out_prefix, inset_percentile: float = 1.0) -> pd.DataFrame:
    """Paper Figure 5, by decile of difficulty (percentile [0,10), ..., [90,100)):
    (a) P(negative class = query class), with an inset on the easiest decile in
    bins of ``inset_percentile`` % (the first is the very easiest), (b) mean
    WordNet similarity, (c) mean dot product.  Per run the mean over all pairs
    of a bin; points are mean +- std over seeds.  Table columns: panel
    (``a``, ``a inset``, ``b``, ``c``), measure, temperature, x (bin), lo, hi
    (percentiles), mean, std, n."""
    n_inset = int(np.ceil(10 / inset_percentile - 1e-9))
    edges = {"decile": (np.arange(11) * 10.0), "inset": np.minimum(np.arange(n_inset + 1) * inset_percentile, 10)}
    runs = _runs(pairs, "figure 5")
    rows = []
    for t, seed, g in runs:
        pct = g["percentile"].to_numpy(np.float64)
        decile = np.minimum((pct // 10).astype(np.int64), 9)
        easiest = decile == 0
        inset = np.minimum((pct[easiest] // inset_percentile).astype(np.int64), n_inset - 1)
        for panel, col in (("a", "same_class"), ("b", "wordnet"), ("c", "difficulty")):
            v = g[col].to_numpy(np.float64)
            parts = [(panel, "decile", _binned(decile, 10, v))]
            if panel == "a":
                parts.append(("a inset", "inset", _binned(inset, n_inset, v[easiest])))
            for name, kind, means in parts:
                e = edges[kind]
                rows += [dict(panel=name, measure=col, temperature=t, x=f"{_pct(e[i])}-{_pct(e[i + 1])}%",
                              lo=e[i], hi=e[i + 1], seed=seed, value=m) for i, m in enumerate(means)]
    table = _over_seeds(pd.DataFrame(rows), ["panel", "measure", "temperature", "x", "lo", "hi"])

    temps = sorted(table.temperature.unique())
    colours = _colours(temps)
    markers = dict(zip(temps, "osD^vP*X"))
    with sns.axes_style("whitegrid"):
        fig, axes = plt.subplots(1, 3, figsize=(15, 4.4))
    inset_ax = axes[0].inset_axes([0.1, 0.56, 0.45, 0.36])
    for ax, panel in ((axes[0], "a"), (axes[1], "b"), (axes[2], "c"), (inset_ax, "a inset")):
        for t in temps:
            d = table[(table.panel == panel) & (table.temperature == t)]
            ax.errorbar(np.arange(len(d)), d["mean"], yerr=d["std"], color=colours[t], marker=markers[t],
                        capsize=3, ms=4 if panel != "a inset" else 3, label=f"t={t:g}")
        labels = list(d.x)
        if panel == "a inset":
            ax.set_xticks(range(len(labels)), [lab if i in (0, len(labels) - 1) else "" for i, lab in
                                               enumerate(labels)], fontsize=7)
            ax.tick_params(labelsize=7)
            ax.set_title(f"easiest 10% in bins of {_pct(inset_percentile)}%", fontsize=7)
            continue
        col = d.measure.iloc[0]
        ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right", fontsize=8)
        ax.set_xlabel("difficulty percentile of the negative (larger: harder)", fontsize=9)
        ax.set_title(f"({panel}) {MEASURES[col][0]}", fontsize=10)
        ax.set_ylabel(MEASURES[col][1], fontsize=9)
    a = table[table.panel == "a"]
    lo, hi = (a["mean"] - a["std"].fillna(0)).min(), (a["mean"] + a["std"].fillna(0)).max()
    if np.isfinite(lo) and np.isfinite(hi):  # the curve below, the inset above it
        axes[0].set_ylim(lo - 0.05 * (hi - lo) - 1e-3, hi + 1.3 * (hi - lo) + 1e-3)
    axes[2].axhline(0, color="0.4", lw=0.8)
    axes[2].legend(fontsize=8, title="temperature", title_fontsize=8)
    fig.suptitle(f"Figure 5 - {_setting(pairs, runs)}: by decile of difficulty, mean $\\pm$ std over "
                 f"{_seed_range(table)} seeds", fontsize=10)
    fig.tight_layout()
    return _write(fig, table, out_prefix)


# ------------------------------------------------------------------ figure 6

def _matrices(g: pd.DataFrame, *cols: str) -> list[torch.Tensor]:
    """``[Q, N]`` float32 tensor of each column (queries and negatives in id order); every pair exactly once."""
    qi, qs = pd.factorize(g["query"], sort=True)
    ni, ns = pd.factorize(g["negative"], sort=True)
    flat = qi.astype(np.int64) * len(ns) + ni
    if len(g) != len(qs) * len(ns) or np.bincount(flat, minlength=len(g)).max() != 1:
        raise ValueError(f"figure 6 needs every (query, negative) pair once: {len(g)} rows for "
                         f"{len(qs)} queries x {len(ns)} negatives")
    out = []
    for col in cols:
        m = np.empty(len(qs) * len(ns), np.float32)
        m[flat] = g[col].to_numpy(np.float32)
        out.append(torch.from_numpy(m.reshape(len(qs), len(ns))))
    return out


def fig6(pairs: pd.DataFrame, out_prefix, hard_cut: float = 95.0, null_seed: int = 0) -> pd.DataFrame:
    """Paper Figure 6: for each negative, the percentage of queries for which it
    is among their hardest ``100 - hard_cut`` % (``analysis.hard_frequency``),
    for the trained model and for the null model: each query's difficulties
    shuffled among its negatives (``analysis.shuffle_within_queries``, seed
    ``null_seed`` + the run's seed), then ranked again, which keeps every
    query's multiset of difficulties and breaks any tie to the negative.

    Per seed, not pooled: each run's distribution over its negatives is
    histogrammed on bins shared by all runs; the curves are mean +- std over
    seeds of the percentage of negatives per bin (panel ``histogram``; lo, hi:
    the bin's range of percentages of queries).  Panel ``spread``: each
    distribution's std over negatives, mean +- std over seeds, with an unpaired
    t-test across seeds of trained against null (``p_value``)."""
    from . import analysis

    runs = _runs(pairs, "figure 6")
    freqs = []  # (temperature, seed, model, [N] count of queries for which each negative is hard)
    for t, seed, g in runs:
        pct, d = _matrices(g, "percentile", "difficulty")
        null = analysis.percentile_ranks(analysis.shuffle_within_queries(d, null_seed + seed))
        for model, p in (("trained", pct), ("null", null)):
            freq = analysis.hard_frequency(p, hard_cut).double().numpy()
            freqs.append((t, seed, model, np.rint(freq * p.shape[0]).astype(np.int64)))
    queries = {int(g["query"].nunique()) for _, _, g in runs}
    if len(queries) != 1:
        raise ValueError(f"figure 6 compares runs with the same number of queries, got {sorted(queries)}")
    q = queries.pop()
    top = max(c.max() for *_, c in freqs)
    width = max(1, int(np.ceil((top + 1) / 40)))  # about 40 bins of whole counts of queries
    lo = np.arange(0, top + 1, width)
    hi = np.minimum(lo + width - 1, top)            # a bin holds counts lo..hi
    rows = []
    for t, seed, model, counts in freqs:
        share = np.bincount(counts // width, minlength=len(lo)) * 100.0 / len(counts)
        rows += [dict(panel="histogram", measure="% of negatives", temperature=t, model=model,
                      x=(a + b) / 2 * 100 / q, lo=a * 100 / q, hi=b * 100 / q, seed=seed, value=v)
                 for a, b, v in zip(lo, hi, share)]
        pct = counts * 100.0 / q
        rows += [dict(panel="spread", measure=f"{name} over negatives (% of queries)", temperature=t, model=model,
                      seed=seed, value=float(f(pct))) for name, f in (("mean", np.mean), ("std", np.std))]
    per_seed = pd.DataFrame(rows)
    table = _over_seeds(per_seed, ["panel", "measure", "temperature", "model", "x", "lo", "hi"])
    spread = per_seed[per_seed.measure == "std over negatives (% of queries)"]
    p = {t: _ttest(d.value[d.model == "trained"], d.value[d.model == "null"]) for t, d in spread.groupby("temperature")}
    table["p_value"] = np.where(table.measure.str.startswith("std"), table.temperature.map(p), np.nan)

    temps = sorted(table.temperature.unique())
    colours = {"trained": sns.color_palette("colorblind")[0], "null": sns.color_palette("colorblind")[1]}
    names = {"trained": "trained model", "null": "null model (shuffled within queries)"}
    edges = (np.append(lo, hi[-1] + 1) - 0.5) * 100 / q
    with sns.axes_style("whitegrid"):
        fig, axes = plt.subplots(1, len(temps), figsize=(6.5 * len(temps), 4.4), squeeze=False)
    for ax, t in zip(axes[0], temps):
        text = ["std over negatives:"]
        for model in ("trained", "null"):
            d = table[(table.panel == "histogram") & (table.temperature == t) & (table.model == model)]
            ax.stairs(d["mean"], edges, color=colours[model], lw=1.6, label=names[model])
            ax.errorbar(d.x, d["mean"], yerr=d["std"], fmt="none", color=colours[model], capsize=2, lw=0.8)
            sp = table[table.measure.str.startswith("std") & (table.temperature == t) & (table.model == model)].iloc[0]
            text.append(f"{model} {sp['mean']:.2f}" + ("" if np.isnan(sp["std"]) else f" $\\pm$ {sp['std']:.2f}"))
        text.append(_p_text(p[t]))
        ax.axvline(100 - hard_cut, color="0.4", ls=":", lw=1)
        ax.text(0.97, 0.95, "\n".join(text), transform=ax.transAxes, ha="right", va="top", fontsize=9,
                bbox=dict(facecolor="white", alpha=0.85, edgecolor="0.7"))
        ax.set_xlabel(f"% of queries for which the negative is in their hardest {_pct(100 - hard_cut)}%", fontsize=9)
        ax.set_ylabel("% of negatives", fontsize=9)
        ax.set_title(f"t={t:g}", fontsize=10)
        ax.legend(loc="upper left", fontsize=8)
    fig.suptitle(f"Figure 6 - {_setting(pairs, runs)}\nhow often each negative is hard: per seed, "
                 f"mean $\\pm$ std over {_seed_range(table)} seeds", fontsize=10)
    fig.tight_layout()
    return _write(fig, table, out_prefix)


# ------------------------------------------------------------------ tables A4-A6

#: table -> (title, sort key of the mean dot product; smallest first)
TABLES = {"A4": ("most anti-correlated class pairs", lambda m: m),
          "A5": ("most correlated class pairs", lambda m: -m),
          "A6": ("most orthogonal class pairs", lambda m: m.abs())}


def _both_ways(sums: np.ndarray, c: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Flat ``[C * C]`` sums over (query class, negative class) -> sums over the unordered pairs {a, b}."""
    m = sums.reshape(c, c)
    return (m + m.T)[a, b]


def tables_a4_a6(pairs: pd.DataFrame, out_prefix, rows: int = 5, class_names=None) -> pd.DataFrame:
    """Paper Tables A4-A6: pairs of different classes {a, b} (a < b) with the most
    negative (A4), most positive (A5) and closest-to-zero (A6) mean dot product
    of a query of one class with a negative of the other (both directions
    pooled), per run, then mean +- std over seeds; ``rows`` pairs per table and
    temperature (ties: lower class indices first), with the pair's WordNet
    similarity.  ``class_names[i]`` names label i (default: the index)."""
    runs = _runs(pairs, "tables A4-A6")
    c = 1 + max(int(pairs["query_label"].max()), int(pairs["negative_label"].max()))
    if class_names is not None:
        if c > len(class_names):
            raise ValueError(f"labels up to {c - 1}, but only {len(class_names)} class names")
        c = len(class_names)
    a, b = np.triu_indices(c, 1)
    per_seed = []
    for t, seed, g in runs:
        flat = g["query_label"].to_numpy(np.int64) * c + g["negative_label"].to_numpy(np.int64)
        k = _both_ways(np.bincount(flat, minlength=c * c), c, a, b)
        dot, wordnet = (_both_ways(np.bincount(flat, weights=g[col].to_numpy(np.float64), minlength=c * c), c, a, b)
                        / np.maximum(k, 1) for col in ("difficulty", "wordnet"))
        per_seed.append(pd.DataFrame(dict(temperature=t, class_a=a, class_b=b, wordnet=wordnet, seed=seed,
                                          value=dot))[k > 0])
    per_seed = pd.concat(per_seed, ignore_index=True)
    stats = _over_seeds(per_seed, ["temperature", "class_a", "class_b", "wordnet"])  # wordnet: one per pair
    name = (lambda i: class_names[i]) if class_names is not None else str
    parts = []
    for t, d in stats.groupby("temperature", sort=True):
        for table, (title, key) in TABLES.items():
            top = d.assign(key=key(d["mean"])).sort_values(["key", "class_a", "class_b"], kind="stable").head(rows)
            parts.append(top.drop(columns="key").assign(table=table, title=title, rank=np.arange(1, len(top) + 1)))
    out = pd.concat(parts, ignore_index=True)
    out["name_a"], out["name_b"] = out.class_a.map(name), out.class_b.map(name)
    out = out[["table", "title", "temperature", "rank", "class_a", "class_b", "name_a", "name_b", "mean", "std", "n",
               "wordnet"]]

    blocks = list(out.groupby(["temperature", "table"], sort=True))
    heights = [len(d) + 1.8 for _, d in blocks]
    fig, axes = plt.subplots(len(blocks), 1, figsize=(8, 0.26 * sum(heights) + 0.5), squeeze=False,
                             gridspec_kw=dict(height_ratios=heights))
    for ax, ((t, table), d) in zip(axes[:, 0], blocks):
        ax.axis("off")
        cells = [[r.rank, r.name_a, r.name_b, f"{r.mean:+.3f}" + ("" if np.isnan(r.std) else f" $\\pm$ {r.std:.3f}"),
                  f"{r.wordnet:g}"] for r in d.itertuples()]
        tab = ax.table(cellText=cells, colLabels=["#", "class", "class", "mean dot product", "WordNet similarity"],
                       loc="upper center", cellLoc="left", colWidths=[0.05, 0.27, 0.27, 0.23, 0.18])
        tab.auto_set_font_size(False)
        tab.set_fontsize(9)
        ax.set_title(f"Table {table} - {d.title.iloc[0]} (t={t:g})", fontsize=10, loc="left")
    fig.suptitle(f"Tables A4-A6 - {_setting(pairs, runs)}: mean over {_seed_range(out)} seeds $\\pm$ std",
                 fontsize=10)
    fig.tight_layout()
    return _write(fig, out, out_prefix)


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
    "fig_methods": lambda paths, out, fig: fig_methods(load_probes(paths), out, fig["policies"], fig["band"]),
    "fig4": lambda paths, out, fig: fig4(load_analyses(paths)[0], out, **fig),
    "fig5": lambda paths, out, fig: fig5(load_analyses(paths)[0], out, **fig),
    "fig6": lambda paths, out, fig: fig6(load_analyses(paths)[0], out, **fig),
    "tables_a4_a6": _tables,
}


def build(name: str, paths, out_prefix, config: dict) -> pd.DataFrame:
    """``python -m negatives figure NAME``: draw figure ``name`` from its input
    files (probe.json files; or pairs.parquet files, plus the similarity .tsv
    for the tables) with its section of the full config; returns the table
    written to CSV."""
    if name not in FIGURES:
        raise ValueError(f"unknown figure {name!r}; allowed: {', '.join(FIGURES)}")
    section = config.get("figures", {}).get(name)
    if section is None:
        raise KeyError(f"the config has no figures.{name} section")
    return FIGURES[name](paths, out_prefix, section)
