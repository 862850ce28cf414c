"""The pairs tables of the analysed runs, as Section 4's figures and tables
read them: loaded with the run's identity, split into one group per run, and
summarised over seeds.

Drawn from the pairs tables of the analysed runs (``analysis.load_pairs``:
one row per query x negative, docs/INTERFACES.md).  Every statistic is
computed per run (temperature, seed) and then summarised over seeds (mean,
std with ddof=1, n), one group per temperature."""

from __future__ import annotations

import numpy as np
import pandas as pd

from .plotting import single_value

__all__ = ["PAIRS_COLUMNS", "load_analyses", "split_runs", "over_seeds", "describe_setting"]

#: the pairs columns the figures and tables read
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


def split_runs(pairs: pd.DataFrame, figure: str) -> list[tuple[float, int, pd.DataFrame]]:
    """``[(temperature, seed, its pairs)]`` of every analysed run, sorted.

    Raises naming ``figure`` when the table lacks a column of
    :data:`PAIRS_COLUMNS` or has no rows."""
    missing = [c for c in PAIRS_COLUMNS if c not in pairs]
    if missing:
        raise ValueError(f"{figure} needs pairs columns missing from the table: {', '.join(missing)}")
    if pairs.empty:
        raise ValueError(f"{figure}: the pairs table is empty")
    # temperatures are float32 in the table; the config's have at most 6 significant digits
    return [(float(f"{t:g}"), int(s), g) for (t, s), g in pairs.groupby(["temperature", "run_seed"], sort=True)]


def over_seeds(per_seed: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Mean, std (ddof=1; NaN for one seed) and n of ``value`` over seeds, per ``keys`` (in order of appearance)."""
    return (
        per_seed.groupby(keys, sort=False, dropna=False)["value"]
        .agg(mean="mean", std=lambda v: v.std(ddof=1), n="count")
        .reset_index()
    )


def describe_setting(pairs: pd.DataFrame, runs) -> str:
    """``dataset / method / policy P / Q queries x N negatives`` of the analysed runs, for a title."""
    parts = [str(single_value(pairs, c)) for c in ("dataset", "method") if c in pairs]
    if "policy" in pairs:
        parts.append(f"policy {single_value(pairs, 'policy')}")
    g = runs[0][2]
    return " / ".join([*parts, f"{g['query'].nunique()} queries x {g['negative'].nunique()} negatives"])
