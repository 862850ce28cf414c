"""Figure 2, drawn from probe results: runs trained on one band of negatives
(a segment of difficulty, or the easiest x%), beside the baseline and the
random-init encoder.  The runs set against the baseline with a t-test
(Figure 3, Table 1, ...) are in :mod:`.comparison_figures`."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from ..policies.bands import Band  # noqa: E402
from ..policies.registry import parse_policy  # noqa: E402
from .plotting import (  # noqa: E402
    EVALUATIONS,
    RANDOM_INIT,
    canonical,
    fmt_pct,
    seed_range,
    single_value,
    summarize,
    temperature_colours,
    write_figure,
)

__all__ = ["fig2"]


def _keep_band(name: str) -> Band:
    p = parse_policy(name).policy
    if not (isinstance(p, Band) and p.action == "keep"):
        raise ValueError(f"figure 2 plots 'keep[a,b)' policies, got {name!r}")
    return p


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
        "a": ({p.name: f"{fmt_pct(p.lo_pct)}-{fmt_pct(p.hi_pct)}%" for _, p in seg}, "top1"),
        "b": ({p.name: f"{fmt_pct(p.lo_pct)}-{fmt_pct(p.hi_pct)}%" for _, p in seg}, "top5"),
        "c": ({p.name: f"0-{fmt_pct(p.hi_pct)}%" for _, p in easy}, "top1"),
        "d": ({p.name: f"0-{fmt_pct(p.hi_pct)}%" for _, p in easy}, "top5"),
    }
    canon = {p: parse_policy(p).name for p in segments + easiest + [baseline]}
    df = canonical(df)
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
                    rows.append(
                        dict(
                            panel=panel,
                            evaluation=ev,
                            metric=r.metric,
                            policy=policy,
                            temperature=r.temperature,
                            x=x,
                            mean=r.mean,
                            std=r.std,
                            n=r.n,
                        )
                    )
    table = pd.DataFrame(
        rows, columns=["panel", "evaluation", "metric", "policy", "temperature", "x", "mean", "std", "n"]
    )

    title = (
        f"Figure 2 - {single_value(df, 'dataset')} / {single_value(df, 'method')} / {single_value(trained, 'epochs'):g} epochs: "
        f"mean $\\pm$ std over {seed_range(table)} seeds"
    )
    names = dict(EVALUATIONS)
    if "fewshot_labels_per_class" in df:
        names["fewshot"] += f" ({single_value(trained, 'fewshot_labels_per_class'):g}/class)"
    return write_figure(_draw_fig2(table, panels, temps, title, names), table, out_prefix)


def _draw_fig2(table: pd.DataFrame, panels: dict, temps: list, title: str, names: dict):
    colours = temperature_colours(temps)
    markers = dict(zip(temps, "osD^vP*X"))
    xlabel = {"a": "segment of negatives used (difficulty percentile)", "c": "easiest negatives used (percentile)"}
    with sns.axes_style("whitegrid"):
        fig, axes = plt.subplots(len(names), len(panels), figsize=(4.2 * len(panels), 3.3 * len(names)), squeeze=False)
    for i, ev in enumerate(names):
        for j, (panel, (labels, top)) in enumerate(panels.items()):
            ax = axes[i, j]
            t = table[(table.panel == panel) & (table.evaluation == ev)]
            ax.set_title(f"({panel}) {names[ev]}, top-{top[-1]}", fontsize=10)
            if t["mean"].isna().all():
                ax.text(
                    0.5,
                    0.5,
                    f"top-{top[-1]} not reported\n(too few classes)" if top == "top5" else "no data",
                    ha="center",
                    va="center",
                    transform=ax.transAxes,
                    color="grey",
                )
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
                ax.errorbar(
                    np.arange(len(labels)) + dx,
                    pts["mean"],
                    yerr=pts["std"],
                    color=c,
                    marker=markers[temp],
                    ls="none",
                    capsize=3,
                    ms=5,
                )
            ax.set_xticks(range(len(labels)), list(labels.values()), fontsize=8)
            ax.set_xlim(-0.5, len(labels) - 0.5)
            if j == 0 or j == 2:
                ax.set_ylabel(f"{names[ev]}\naccuracy (%)" if j == 0 else "accuracy (%)", fontsize=9)
            if i == len(names) - 1:
                ax.set_xlabel(xlabel.get(panel, xlabel["a" if panel == "b" else "c"]), fontsize=8)
    handles = [Line2D([], [], color=colours[t], marker=markers[t], ls="none", label=f"runs, t={t:g}") for t in temps]
    handles += [Line2D([], [], color=colours[t], label=f"baseline (all negatives), t={t:g}") for t in temps]
    handles += [
        Patch(color="0.6", alpha=0.3, label="baseline $\\pm$ std"),
        Line2D([], [], color="0.35", ls="--", label="random-init encoder"),
    ]
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 4), fontsize=9, frameon=False)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout(rect=(0, 0.06, 1, 0.97))
    return fig
