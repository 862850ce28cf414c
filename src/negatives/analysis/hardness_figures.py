"""Section 4's figures and tables: what distinguishes hard negatives from easy
ones (Figures 4-6, Tables A4-A6)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
import torch  # noqa: E402

from .plotting import fmt_pct, p_text, seed_range, single_value, temperature_colours, ttest_p, write_figure  # noqa: E402

__all__ = ["PAIRS_COLUMNS", "MEASURES", "load_analyses", "fig4", "fig5", "fig6", "tables_a4_a6"]


# ------------------------------------------------------------------ Section 4: figures 4-6, tables A4-A6
#
# Drawn from the pairs tables of the analysed runs (``analysis.load_pairs``:
# one row per query x negative, docs/INTERFACES.md).  Every statistic is
# computed per run (temperature, seed) and then summarised over seeds (mean,
# std with ddof=1, n), one group per temperature.

#: the pairs columns these figures read
PAIRS_COLUMNS = (
    "query",
    "negative",
    "query_label",
    "negative_label",
    "difficulty",
    "percentile",
    "same_class",
    "wordnet",
    "temperature",
    "run_seed",
)
#: pairs column -> (panel title, axis label) in figures 4 and 5
MEASURES = {
    "same_class": ("shared labels", "P(same class as the query)"),
    "wordnet": ("WordNet similarity", "depth of the lowest common hypernym\n(higher: more similar)"),
    "difficulty": ("dot product", "mean dot product (cosine)"),
}


def load_analyses(paths) -> tuple[pd.DataFrame, list[str] | None]:
    """``pairs.parquet`` files, and at most one ``wordnet_similarity.tsv`` whose
    header names the classes -> (pairs of every run, class names or None)."""
    from ..data.similarity import read_similarity
    from .pairs import load_pairs, read_identity

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
    return (
        per_seed.groupby(keys, sort=False, dropna=False)["value"]
        .agg(mean="mean", std=lambda v: v.std(ddof=1), n="count")
        .reset_index()
    )


def _binned(bins: np.ndarray, n: int, values: np.ndarray) -> np.ndarray:
    """Mean of ``values`` in each of ``n`` bins (NaN where a bin is empty)."""
    counts = np.bincount(bins, minlength=n)
    sums = np.bincount(bins, weights=values, minlength=n)
    return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


def _setting(pairs: pd.DataFrame, runs) -> str:
    """``dataset / method / policy P / Q queries x N negatives`` of the analysed runs."""
    parts = [str(single_value(pairs, c)) for c in ("dataset", "method") if c in pairs]
    if "policy" in pairs:
        parts.append(f"policy {single_value(pairs, 'policy')}")
    g = runs[0][2]
    return " / ".join([*parts, f"{g['query'].nunique()} queries x {g['negative'].nunique()} negatives"])


# ------------------------------------------------------------------ figure 4


def fig4(pairs: pd.DataFrame, out_prefix, hard_cut: float = 95.0) -> pd.DataFrame:
    """Paper Figure 4: the hardest ``100 - hard_cut`` % of each query's negatives
    (percentile >= cut) against the easiest ``hard_cut`` %: (a) the fraction
    sharing the query's class, (b) mean WordNet similarity.  Per run, one value
    per group over all its pairs; bars are mean +- std over seeds, and the
    p-value is an unpaired t-test of the hard against the easy per-seed values
    (column ``p_value``, the same in both rows of a panel and temperature)."""
    groups = {False: f"easiest {fmt_pct(hard_cut)}%", True: f"hardest {fmt_pct(100 - hard_cut)}%"}
    runs = _runs(pairs, "figure 4")
    rows = []
    for t, seed, g in runs:
        hard = g["percentile"].to_numpy() >= hard_cut  # as analysis.hard_frequency
        for panel, col in (("a", "same_class"), ("b", "wordnet")):
            v = g[col].to_numpy(np.float64)
            for is_hard, group in groups.items():
                sel = v[hard == is_hard]
                rows.append(
                    dict(
                        panel=panel,
                        measure=col,
                        temperature=t,
                        group=group,
                        seed=seed,
                        value=sel.mean() if sel.size else np.nan,
                    )
                )
    per_seed = pd.DataFrame(rows)
    table = _over_seeds(per_seed, ["panel", "measure", "temperature", "group"])
    p = {
        k: ttest_p(d.value[d.group == groups[True]], d.value[d.group == groups[False]])
        for k, d in per_seed.groupby(["panel", "temperature"])
    }
    table["p_value"] = [p[k] for k in zip(table.panel, table.temperature)]

    temps = sorted(table.temperature.unique())
    colours = temperature_colours(temps)
    with sns.axes_style("whitegrid"):
        fig, axes = plt.subplots(1, 2, figsize=(9, 4))
    width = 0.8 / len(temps)
    for ax, (panel, col) in zip(axes, (("a", "same_class"), ("b", "wordnet"))):
        text = []
        for k, t in enumerate(temps):
            d = table[(table.panel == panel) & (table.temperature == t)].set_index("group").reindex(groups.values())
            x = np.arange(2) + (k - (len(temps) - 1) / 2) * width
            ax.bar(x, d["mean"], width * 0.9, yerr=d["std"].fillna(0), capsize=4, color=colours[t], label=f"t={t:g}")
            text.append((f"t={t:g}: " if len(temps) > 1 else "") + p_text(d.p_value.iloc[0]))
        ax.text(0.5, 0.97, "\n".join(text), transform=ax.transAxes, ha="center", va="top", fontsize=9)
        top = (table["mean"] + table["std"].fillna(0))[table.panel == panel].max()
        ax.set_ylim(0, top * (1.15 + 0.08 * len(temps)) if top > 0 else None)
        ax.set_xticks(range(2), list(groups.values()))
        ax.set_title(f"({panel}) {MEASURES[col][0]}", fontsize=10)
        ax.set_ylabel(MEASURES[col][1], fontsize=9)
    axes[0].legend(fontsize=8, title="temperature", title_fontsize=8, loc="upper left")
    fig.suptitle(
        f"Figure 4 - {_setting(pairs, runs)}\nhard vs easy negatives: mean $\\pm$ std over "
        f"{seed_range(table)} seeds, unpaired t-test across seeds",
        fontsize=10,
    )
    fig.tight_layout()
    return write_figure(fig, table, out_prefix)


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
                rows += [
                    dict(
                        panel=name,
                        measure=col,
                        temperature=t,
                        x=f"{fmt_pct(e[i])}-{fmt_pct(e[i + 1])}%",
                        lo=e[i],
                        hi=e[i + 1],
                        seed=seed,
                        value=m,
                    )
                    for i, m in enumerate(means)
                ]
    table = _over_seeds(pd.DataFrame(rows), ["panel", "measure", "temperature", "x", "lo", "hi"])

    temps = sorted(table.temperature.unique())
    colours = temperature_colours(temps)
    markers = dict(zip(temps, "osD^vP*X"))
    with sns.axes_style("whitegrid"):
        fig, axes = plt.subplots(1, 3, figsize=(15, 4.4))
    inset_ax = axes[0].inset_axes([0.1, 0.56, 0.45, 0.36])
    for ax, panel in ((axes[0], "a"), (axes[1], "b"), (axes[2], "c"), (inset_ax, "a inset")):
        for t in temps:
            d = table[(table.panel == panel) & (table.temperature == t)]
            ax.errorbar(
                np.arange(len(d)),
                d["mean"],
                yerr=d["std"],
                color=colours[t],
                marker=markers[t],
                capsize=3,
                ms=4 if panel != "a inset" else 3,
                label=f"t={t:g}",
            )
        labels = list(d.x)
        if panel == "a inset":
            ax.set_xticks(
                range(len(labels)),
                [lab if i in (0, len(labels) - 1) else "" for i, lab in enumerate(labels)],
                fontsize=7,
            )
            ax.tick_params(labelsize=7)
            ax.set_title(f"easiest 10% in bins of {fmt_pct(inset_percentile)}%", fontsize=7)
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
    fig.suptitle(
        f"Figure 5 - {_setting(pairs, runs)}: by decile of difficulty, mean $\\pm$ std over {seed_range(table)} seeds",
        fontsize=10,
    )
    fig.tight_layout()
    return write_figure(fig, table, out_prefix)


# ------------------------------------------------------------------ figure 6


def _matrices(g: pd.DataFrame, *cols: str) -> list[torch.Tensor]:
    """``[Q, N]`` float32 tensor of each column (queries and negatives in id order); every pair exactly once."""
    qi, qs = pd.factorize(g["query"], sort=True)
    ni, ns = pd.factorize(g["negative"], sort=True)
    flat = qi.astype(np.int64) * len(ns) + ni
    if len(g) != len(qs) * len(ns) or np.bincount(flat, minlength=len(g)).max() != 1:
        raise ValueError(
            f"figure 6 needs every (query, negative) pair once: {len(g)} rows for "
            f"{len(qs)} queries x {len(ns)} negatives"
        )
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
    from . import pairs as analysis

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
    hi = np.minimum(lo + width - 1, top)  # a bin holds counts lo..hi
    rows = []
    for t, seed, model, counts in freqs:
        share = np.bincount(counts // width, minlength=len(lo)) * 100.0 / len(counts)
        rows += [
            dict(
                panel="histogram",
                measure="% of negatives",
                temperature=t,
                model=model,
                x=(a + b) / 2 * 100 / q,
                lo=a * 100 / q,
                hi=b * 100 / q,
                seed=seed,
                value=v,
            )
            for a, b, v in zip(lo, hi, share)
        ]
        pct = counts * 100.0 / q
        rows += [
            dict(
                panel="spread",
                measure=f"{name} over negatives (% of queries)",
                temperature=t,
                model=model,
                seed=seed,
                value=float(f(pct)),
            )
            for name, f in (("mean", np.mean), ("std", np.std))
        ]
    per_seed = pd.DataFrame(rows)
    table = _over_seeds(per_seed, ["panel", "measure", "temperature", "model", "x", "lo", "hi"])
    spread = per_seed[per_seed.measure == "std over negatives (% of queries)"]
    p = {
        t: ttest_p(d.value[d.model == "trained"], d.value[d.model == "null"]) for t, d in spread.groupby("temperature")
    }
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
        text.append(p_text(p[t]))
        ax.axvline(100 - hard_cut, color="0.4", ls=":", lw=1)
        ax.text(
            0.97,
            0.95,
            "\n".join(text),
            transform=ax.transAxes,
            ha="right",
            va="top",
            fontsize=9,
            bbox=dict(facecolor="white", alpha=0.85, edgecolor="0.7"),
        )
        ax.set_xlabel(f"% of queries for which the negative is in their hardest {fmt_pct(100 - hard_cut)}%", fontsize=9)
        ax.set_ylabel("% of negatives", fontsize=9)
        ax.set_title(f"t={t:g}", fontsize=10)
        ax.legend(loc="upper left", fontsize=8)
    fig.suptitle(
        f"Figure 6 - {_setting(pairs, runs)}\nhow often each negative is hard: per seed, "
        f"mean $\\pm$ std over {seed_range(table)} seeds",
        fontsize=10,
    )
    fig.tight_layout()
    return write_figure(fig, table, out_prefix)


# ------------------------------------------------------------------ tables A4-A6

#: table -> (title, sort key of the mean dot product; smallest first)
TABLES = {
    "A4": ("most anti-correlated class pairs", lambda m: m),
    "A5": ("most correlated class pairs", lambda m: -m),
    "A6": ("most orthogonal class pairs", lambda m: m.abs()),
}


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
        dot, wordnet = (
            _both_ways(np.bincount(flat, weights=g[col].to_numpy(np.float64), minlength=c * c), c, a, b)
            / np.maximum(k, 1)
            for col in ("difficulty", "wordnet")
        )
        per_seed.append(
            pd.DataFrame(dict(temperature=t, class_a=a, class_b=b, wordnet=wordnet, seed=seed, value=dot))[k > 0]
        )
    per_seed = pd.concat(per_seed, ignore_index=True)
    stats = _over_seeds(per_seed, ["temperature", "class_a", "class_b", "wordnet"])  # wordnet: one per pair
    name = (lambda i: class_names[i]) if class_names is not None else str
    parts = []
    for _, d in stats.groupby("temperature", sort=True):
        for table, (title, key) in TABLES.items():
            top = d.assign(key=key(d["mean"])).sort_values(["key", "class_a", "class_b"], kind="stable").head(rows)
            parts.append(top.drop(columns="key").assign(table=table, title=title, rank=np.arange(1, len(top) + 1)))
    out = pd.concat(parts, ignore_index=True)
    out["name_a"], out["name_b"] = out.class_a.map(name), out.class_b.map(name)
    out = out[
        [
            "table",
            "title",
            "temperature",
            "rank",
            "class_a",
            "class_b",
            "name_a",
            "name_b",
            "mean",
            "std",
            "n",
            "wordnet",
        ]
    ]

    blocks = list(out.groupby(["temperature", "table"], sort=True))
    heights = [len(d) + 1.8 for _, d in blocks]
    fig, axes = plt.subplots(
        len(blocks), 1, figsize=(8, 0.26 * sum(heights) + 0.5), squeeze=False, gridspec_kw=dict(height_ratios=heights)
    )
    for ax, ((t, table), d) in zip(axes[:, 0], blocks):
        ax.axis("off")
        cells = [
            [
                r.rank,
                r.name_a,
                r.name_b,
                f"{r.mean:+.3f}" + ("" if np.isnan(r.std) else f" $\\pm$ {r.std:.3f}"),
                f"{r.wordnet:g}",
            ]
            for r in d.itertuples()
        ]
        tab = ax.table(
            cellText=cells,
            colLabels=["#", "class", "class", "mean dot product", "WordNet similarity"],
            loc="upper center",
            cellLoc="left",
            colWidths=[0.05, 0.27, 0.27, 0.23, 0.18],
        )
        tab.auto_set_font_size(False)
        tab.set_fontsize(9)
        ax.set_title(f"Table {table} - {d.title.iloc[0]} (t={t:g})", fontsize=10, loc="left")
    fig.suptitle(f"Tables A4-A6 - {_setting(pairs, runs)}: mean over {seed_range(out)} seeds $\\pm$ std", fontsize=10)
    fig.tight_layout()
    return write_figure(fig, out, out_prefix)
