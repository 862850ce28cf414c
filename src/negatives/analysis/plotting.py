"""What every figure shares: the probe results as a table, their summary over
seeds, and the files a figure writes (``{out_prefix}.pdf`` for the paper,
``.png`` for the report, ``.csv`` with the numbers behind it, each atomic)."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from ..policies.registry import parse_policy  # noqa: E402
from ..runtime.atomic import atomic_write, verify  # noqa: E402

__all__ = [
    "EVALUATIONS",
    "METRICS",
    "RANDOM_INIT",
    "GROUP",
    "read_probe",
    "load_probes",
    "summarize",
    "canonical",
    "fmt_pct",
    "write_figure",
    "single_value",
    "seed_range",
    "ttest_p",
    "temperature_colours",
    "p_text",
]


#: probe.json metric prefix -> row label
EVALUATIONS = {"linear": "linear probe", "fewshot": "few-label probe", "knn": "kNN"}
RANDOM_INIT = "random-init"
GROUP = ["policy", "temperature", "metric"]


#: the accuracies every probe.json holds (``null`` where not reported, e.g. top-5 with <= 5 classes)
METRICS = tuple(f"{e}_{k}" for e in EVALUATIONS for k in ("top1", "top5"))


def load_probes(paths, extra_metrics=()) -> pd.DataFrame:
    """One row per ``probe.json`` (its fields as columns, plus ``path``).
    Missing accuracies (``null``, e.g. top-5 with <= 5 classes) become NaN,
    and so does the random-init runs' ``temperature``.

    Refused, one error naming a file, before a figure draws anything: a
    missing, damaged or foreign file (:func:`read_probe`); a file without one
    of :data:`METRICS` or ``extra_metrics``; a file without its
    ``evaluation`` record (written before probe.json kept one: its kNN
    temperature, k and linear probe are unknown, and a kNN temperature
    under 0.0113 overflowed then; evaluating it again writes the record);
    two files whose ``evaluation`` records differ (naming both and the
    first key that differs).  The records themselves (``evaluation``,
    ``ran_with``, ``versions``) are checked, not tabled; ``ran_with`` and
    ``versions`` may differ between the files.
    """
    paths = [Path(p) for p in paths]
    probes = [read_probe(p) for p in paths]
    for path, probe in zip(paths, probes):
        missing = [m for m in (*METRICS, *extra_metrics) if m not in probe]
        if missing:
            raise ValueError(
                f"{path} lacks the metric {missing[0]}; delete it and evaluate the run again (snakemake {path})"
            )
        if not isinstance(probe.get("evaluation"), dict):
            raise ValueError(
                f"{path} does not record how it was evaluated (no 'evaluation': a probe.json from an "
                f"older version); evaluate the runs again (snakemake --forcerun evaluate)"
            )
    for path, probe in zip(paths[1:], probes[1:]):
        key = _first_difference(probes[0]["evaluation"], probe["evaluation"])
        if key is not None:
            a, b = (_lookup(p["evaluation"], key) for p in (probes[0], probe))
            raise ValueError(
                f"{paths[0]} and {path} were evaluated differently (evaluation.{key}: {a} vs {b}); "
                f"a figure compares runs evaluated alike: evaluate them with the same evaluate settings "
                f"(snakemake --forcerun evaluate)"
            )
    rows = [
        {**{k: v for k, v in probe.items() if not isinstance(v, dict)}, "path": str(p)}
        for p, probe in zip(paths, probes)
    ]
    df = pd.DataFrame(rows)
    for col in df.columns:
        if col.endswith(("_top1", "_top5")) or col == "temperature":
            df[col] = pd.to_numeric(df[col]).astype(float)
    return df


_ABSENT = "(absent)"


def _lookup(record: dict, key: str):
    for part in key.split("."):
        if not isinstance(record, dict) or part not in record:
            return _ABSENT
        record = record[part]
    return json.dumps(record)


def _first_difference(a: dict, b: dict, prefix: str = "") -> str | None:
    """The first dotted key (``a``'s order, then ``b``'s new keys) whose value differs, or ``None``."""
    for key in dict.fromkeys([*a, *b]):
        x, y = a.get(key, _ABSENT), b.get(key, _ABSENT)
        if isinstance(x, dict) and isinstance(y, dict):
            inner = _first_difference(x, y, f"{prefix}{key}.")
            if inner is not None:
                return inner
        elif x != y:
            return prefix + key
    return None


def read_probe(path) -> dict:
    """One ``probe.json``; a missing, truncated or foreign file is one error
    naming it and how to rebuild it."""
    path = Path(path)
    verify(path, "probe.json", f"evaluate the run (snakemake {path})")
    rebuild = f"delete it and evaluate the run again (snakemake {path})"
    try:
        probe = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not a complete probe.json ({e}); {rebuild}") from None
    missing = [
        k
        for k in ("dataset", "method", "policy", "temperature", "seed")
        if not isinstance(probe, dict) or k not in probe
    ]
    if missing:
        raise ValueError(f"{path} is not a probe.json (it lacks {', '.join(missing)}); {rebuild}")
    return probe


def summarize(df: pd.DataFrame, metrics) -> pd.DataFrame:
    """Mean, std (ddof=1) and n over seeds per (policy, temperature, metric).

    One seed gives ``std`` NaN, never 0; ``n`` counts the non-missing values.
    Raises ``ValueError`` when a (policy, temperature, seed) appears twice.
    """
    dup = df.duplicated(["policy", "temperature", "seed"], keep=False)
    if dup.any():
        raise ValueError(
            f"duplicate runs (policy, temperature, seed):\n{df.loc[dup, ['policy', 'temperature', 'seed']]}"
        )
    long = df.melt(id_vars=["policy", "temperature", "seed"], value_vars=list(metrics), var_name="metric")
    return (
        long.groupby(GROUP, dropna=False, sort=False)["value"]
        .agg(mean="mean", std=lambda v: v.std(ddof=1), n="count")
        .reset_index()
    )


# ------------------------------------------------------------------ helpers


def canonical(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` with every policy under its canonical name (random-init as is)."""
    return df.assign(policy=df["policy"].map(lambda p: p if p == RANDOM_INIT else parse_policy(p).name))


def fmt_pct(x: float) -> str:
    return f"{x:g}"


def write_figure(fig, table: pd.DataFrame, out_prefix) -> pd.DataFrame:
    """Write ``out_prefix`` + ``.pdf``/``.png`` (``fig``, then closed) and ``.csv`` (``table``), each atomically."""
    prefix = Path(out_prefix)
    try:
        for ext in ("pdf", "png"):
            atomic_write(
                prefix.with_name(prefix.name + "." + ext), lambda tmp, ext=ext: fig.savefig(tmp, format=ext, dpi=150)
            )
    finally:
        plt.close(fig)
    atomic_write(prefix.with_name(prefix.name + ".csv"), lambda tmp: table.to_csv(tmp, index=False))
    return table


def single_value(df: pd.DataFrame, col: str):
    vals = df[col].dropna().unique() if col in df else []
    if len(vals) != 1:
        raise ValueError(f"a figure shows one {col}; the probes have {list(vals)}")
    return vals[0]


def seed_range(table: pd.DataFrame) -> str:
    n = table.n[table.n > 0]
    lo, hi = int(n.min()), int(n.max())
    return f"{lo}" if lo == hi else f"{lo}-{hi}"


def ttest_p(a, b) -> float:
    """Two-sided unpaired t-test p-value of per-seed values (NaN with fewer than two seeds a side)."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    if min(len(a), len(b)) < 2:
        return float("nan")
    from scipy.stats import ttest_ind

    return float(ttest_ind(a, b).pvalue)


def temperature_colours(temps):
    return dict(zip(temps, sns.color_palette("colorblind", len(temps))))


def p_text(p: float) -> str:
    return "p = n/a (< 2 seeds)" if not np.isfinite(p) else f"p = {p:.2g}"
