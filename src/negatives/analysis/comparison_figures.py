"""The probed runs set against the baseline (all negatives), at each
temperature, with the unpaired t-test of each difference
(``against_baseline``): Figure 3 and Table 1 (bands and class relations
removed), the SimCLR comparison (Appendix A.2), and the neighbouring methods
beside the paper's best band."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

from ..policies.bands import Band  # noqa: E402
from ..policies.classes import ClassFilter  # noqa: E402
from ..policies.registry import parse_policy  # noqa: E402
from ..policies.ring import Ring  # noqa: E402
from .plotting import (  # noqa: E402
    EVALUATIONS,
    RANDOM_INIT,
    canonical,
    fmt_pct,
    p_text,
    seed_range,
    single_value,
    summarize,
    temperature_colours,
    ttest_p,
    write_figure,
)

__all__ = ["against_baseline", "fig3", "table1", "simclr", "fig_methods"]


def against_baseline(
    df: pd.DataFrame, labels: dict[str, str], baseline: str = "all", extra_metrics: tuple[str, ...] = ()
) -> pd.DataFrame:
    """Each policy of ``labels`` (policy -> row label) and the baseline, per
    temperature and metric: mean, std, n over seeds, the difference of means
    to the baseline at the same temperature, and the two-sided unpaired t-test
    p-value of that difference (scipy's ``ttest_ind``; NaN with < 2 seeds a side).

    Columns: evaluation, metric, policy, label, uses_labels, temperature,
    mean, std, n, delta, p_value.  Raises naming the missing runs.
    """
    df = canonical(df)
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
                rows.append(
                    dict(
                        evaluation=metric.rsplit("_", 1)[0] if metric not in extra_metrics else metric,
                        metric=metric,
                        policy=policy,
                        label=label,
                        uses_labels=bool(oracle.get(policy, False)),
                        temperature=t,
                        mean=st["mean"],
                        std=st["std"],
                        n=int(st["n"]),
                        delta=0.0 if same else st["mean"] - base.mean(),
                        p_value=np.nan if same else ttest_p(at.loc[at.policy == policy, metric].dropna(), base),
                    )
                )
    return pd.DataFrame(
        rows,
        columns=[
            "evaluation",
            "metric",
            "policy",
            "label",
            "uses_labels",
            "temperature",
            "mean",
            "std",
            "n",
            "delta",
            "p_value",
        ],
    )


def _draw_comparison(table: pd.DataFrame, labels: list[str], title: str, xlabel: str, names: dict):
    """Rows: evaluations; columns: top-1, top-5.  x: the runs (``labels`` in
    order), one colour per temperature, baseline as a line with its std band,
    p-values against the baseline under each point."""
    temps = sorted(table.temperature.unique())
    colours, markers = temperature_colours(temps), dict(zip(temps, "osD^vP*X"))
    tops = [k for k in ("top1", "top5") if table[table.metric.str.endswith(k)]["mean"].notna().any()]
    evals = [e for e in names if (table.evaluation == e).any()]
    speed = table[table.metric == "train_images_per_s"]
    with sns.axes_style("whitegrid"):
        fig, axes = plt.subplots(
            len(evals) + (not speed.empty),
            len(tops),
            figsize=(1.3 * len(labels) * len(tops) + 3, 3.2 * (len(evals) + (not speed.empty))),
            squeeze=False,
        )
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
                        ax.annotate(
                            p_text(pv).replace("p = ", "p="),
                            (xi, m - (sd if np.isfinite(sd) else 0)),
                            textcoords="offset points",
                            xytext=(0, -11),
                            ha="center",
                            fontsize=6,
                            color=c,
                        )
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


def _comparison_figure(
    df: pd.DataFrame, out_prefix, labels: dict[str, str], name: str, xlabel: str, extra_metrics: tuple[str, ...] = ()
) -> pd.DataFrame:
    table = against_baseline(df, labels, extra_metrics=extra_metrics)
    trained = df[df.policy != RANDOM_INIT]
    title = (
        f"{name} - {single_value(trained, 'dataset')} / {single_value(trained, 'method')} / "
        f"{single_value(trained, 'epochs'):g} epochs: mean $\\pm$ std over {seed_range(table)} seeds, "
        "p: unpaired t-test against the baseline"
    )
    order = list(dict.fromkeys(table.label))
    names = dict(EVALUATIONS)
    return write_figure(_draw_comparison(table, order, title, xlabel, names), table, out_prefix)


def _removed_band(name: str) -> Band:
    p = parse_policy(name).policy
    if not (isinstance(p, Band) and p.action == "drop" and p.hi_pct == 100):
        raise ValueError(f"figure 3 plots the removal of the hardest x%, 'drop[a,100)'; got {name!r}")
    return p


def fig3(df: pd.DataFrame, out_prefix, removed: list[str]) -> pd.DataFrame:
    """Paper Figure 3: every negative but the hardest x% (``drop[a,100)``)
    against the baseline (all negatives), at each temperature, top-1 and top-5,
    with the p-value of each difference.  x: the most difficult negatives
    included (percentile a; the baseline is 100)."""
    bands = sorted((_removed_band(p) for p in removed), key=lambda b: b.lo_pct)
    labels = {b.name: f"up to {fmt_pct(b.lo_pct)}%" for b in bands}
    labels["all"] = "baseline (all negatives)"
    return _comparison_figure(
        df, out_prefix, labels, "Figure 3", "most difficult negatives included (percentile); the hardest are removed"
    )


def _removal_label(name: str) -> str:
    p = parse_policy(name)
    inner = getattr(p.policy, "inner", p.policy)
    if isinstance(inner, Band):
        text = f"remove hardest {fmt_pct(100 - inner.lo_pct)}%" if inner.hi_pct == 100 else f"remove {inner.name}"
    elif getattr(inner, "band", None) is None:
        text = "remove same-class"
    else:
        b = inner.band
        band = f"hardest {fmt_pct(100 - b.lo_pct)}%" if b.hi_pct == 100 else b.name
        text = f"remove {band} & {inner.relation.replace('-class', ' class')}"
    if p.replace:
        text += " (replaced)"
    return text + (" [labels]" if p.uses_labels else "")


def table1(df: pd.DataFrame, out_prefix, removed: list[str]) -> pd.DataFrame:
    """Paper Table 1: removing same-class negatives (an oracle: reads labels),
    the hardest 0.1%, and the hardest 0.1% split by same / other class, at each
    temperature, against the baseline; p-values of each difference."""
    labels = {p: _removal_label(p) for p in removed}
    labels["all"] = "baseline (all negatives)"
    return _comparison_figure(
        df, out_prefix, labels, "Table 1", "negatives removed ([labels]: an oracle run that reads class labels)"
    )


def _simclr_label(name: str) -> str:
    recipe = parse_policy(name)
    p = recipe.policy
    if isinstance(p, Band):
        return f"{p.action} {fmt_pct(p.lo_pct)}-{fmt_pct(p.hi_pct)}%"
    if isinstance(getattr(p, "inner", p), (Band, ClassFilter)):
        return _removal_label(p.name)
    return recipe.name  # another method, or a plugin's policy: its name says what it is


def simclr(df: pd.DataFrame, out_prefix, policies: list[str]) -> pd.DataFrame:
    """Appendix A.2: SimCLR trained on bands of its in-batch negatives (the
    hardest 5%, the easiest 95%) against SimCLR on all of them."""
    labels = {parse_policy(name).name: _simclr_label(name) for name in policies}
    labels["all"] = "baseline (all negatives)"
    return _comparison_figure(df, out_prefix, labels, "Appendix A.2 (SimCLR)", "negatives used (difficulty percentile)")


def fig_methods(df: pd.DataFrame, out_prefix, policies: list[str], band: str) -> pd.DataFrame:
    """The neighbouring methods (MoCHi, Ring, debiased and hard-weighted
    losses, curricula, ...) and our best band against the baseline, same
    data, budget and seeds: top-1 / top-5 with p-values, and each run's
    training cost (median images/s over its epochs)."""
    labels = {}
    for text in policies:
        name, p = parse_policy(text).name, parse_policy(text).policy
        # Wu et al.'s Ring, or their Ball (no inner ball)
        labels[name] = name + ((" (Ring)" if p.inner > 0 else " (Ball)") if isinstance(p, Ring) else "")
    labels[parse_policy(band).name] = f"{parse_policy(band).name} (band)"
    labels["all"] = "baseline (all negatives)"
    return _comparison_figure(df, out_prefix, labels, "Methods", "policy", extra_metrics=("train_images_per_s",))
