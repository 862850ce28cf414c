"""Section 4's Tables A4-A6: the pairs of classes whose queries and negatives
are the most anti-correlated, the most correlated and the most orthogonal
(mean dot product), with their WordNet similarity."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from .pair_runs import describe_setting, over_seeds, split_runs  # noqa: E402
from .plotting import seed_range, write_figure  # noqa: E402

__all__ = ["TABLES", "tables_a4_a6"]

#: table -> (title, sort key of the mean dot product; smallest first)
TABLES = {
    "A4": ("most anti-correlated class pairs", lambda m: m),
    "A5": ("most correlated class pairs", lambda m: -m),
    "A6": ("most orthogonal class pairs", lambda m: m.abs()),
}


def tables_a4_a6(pairs: pd.DataFrame, out_prefix, rows: int = 5, class_names=None) -> pd.DataFrame:
    """Paper Tables A4-A6: pairs of different classes {a, b} (a < b) with the most
    negative (A4), most positive (A5) and closest-to-zero (A6) mean dot product
    of a query of one class with a negative of the other (both directions
    pooled), per run, then mean +- std over seeds; ``rows`` pairs per table and
    temperature (ties: lower class indices first), with the pair's WordNet
    similarity.  ``class_names[i]`` names label i (default: the index)."""
    runs = split_runs(pairs, "tables A4-A6")
    c = 1 + max(int(pairs["query_label"].max()), int(pairs["negative_label"].max()))
    if class_names is not None:
        if c > len(class_names):
            raise ValueError(f"labels up to {c - 1}, but only {len(class_names)} class names")
        c = len(class_names)
    # wordnet: one value per pair
    stats = over_seeds(_class_pair_means(runs, c), ["temperature", "class_a", "class_b", "wordnet"])
    out = _top_pairs(stats, rows, (lambda i: class_names[i]) if class_names is not None else str)
    title = f"Tables A4-A6 - {describe_setting(pairs, runs)}: mean over {seed_range(out)} seeds $\\pm$ std"
    return write_figure(_draw_tables(out, title), out, out_prefix)


def _both_ways(sums: np.ndarray, c: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Flat ``[C * C]`` sums over (query class, negative class) -> sums over the unordered pairs {a, b}."""
    m = sums.reshape(c, c)
    return (m + m.T)[a, b]


def _class_pair_means(runs, c: int) -> pd.DataFrame:
    """Per run, each pair of different classes {a, b} met in it: its mean dot
    product (``value``, both directions pooled) and mean WordNet similarity."""
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
    return pd.concat(per_seed, ignore_index=True)


def _top_pairs(stats: pd.DataFrame, rows: int, name) -> pd.DataFrame:
    """The first ``rows`` class pairs of each table of :data:`TABLES` per
    temperature, ranked, with their names (``name``: class index -> text)."""
    parts = []
    for _, d in stats.groupby("temperature", sort=True):
        for table, (title, key) in TABLES.items():
            top = d.assign(key=key(d["mean"])).sort_values(["key", "class_a", "class_b"], kind="stable").head(rows)
            parts.append(top.drop(columns="key").assign(table=table, title=title, rank=np.arange(1, len(top) + 1)))
    out = pd.concat(parts, ignore_index=True)
    out["name_a"], out["name_b"] = out.class_a.map(name), out.class_b.map(name)
    return out[
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


def _draw_tables(out: pd.DataFrame, title: str):
    """One drawn table per temperature and table of ``out``, stacked."""
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
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig
