"""Figures 4-6 and Tables A4-A6 on synthetic pairs tables with known answers."""

import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from conftest import written
from scipy.stats import ttest_ind

from negatives.analysis import pairs as analysis
from negatives.analysis.figures import fig4, fig5, fig6, tables_a4_a6
from negatives.cli import main
from negatives.figure_registry import build

SEEDS = (0, 1, 2)
# groups whose per-seed values are all equal (by construction here) make scipy warn
pytestmark = pytest.mark.filterwarnings("ignore:Precision loss occurred:RuntimeWarning")


def pairs_table(runs: dict) -> pd.DataFrame:
    """``{(temperature, seed): {column: [Q, N] array}}`` -> a pairs table like
    ``analysis.load_pairs``'s (query-major; missing columns are zeros)."""
    frames = []
    for (t, seed), cols in runs.items():
        q, n = np.shape(cols["percentile"])
        full = {"query": np.repeat(np.arange(q), n), "negative": np.tile(np.arange(n) + 1000, q)}
        for c in ("query_label", "negative_label", "difficulty", "percentile", "same_class", "wordnet"):
            full[c] = np.ravel(cols.get(c, np.zeros((q, n))))
        df = pd.DataFrame(full).astype(analysis.COLUMNS)
        frames.append(df.assign(run_seed=np.int32(seed), temperature=np.float32(t), policy="all"))
    out = pd.concat(frames, ignore_index=True)
    out["policy"] = out["policy"].astype("category")
    return out


def ranks(q: int, n: int, seed: int = 0) -> np.ndarray:
    """``[Q, N]`` ranks 0..N-1, a different random permutation per query."""
    rng = np.random.default_rng(seed)
    return np.argsort(rng.random((q, n)), axis=1).argsort(axis=1)


def assert_files(tmp_path, name):
    assert written(tmp_path) == [f"{name}.{e}" for e in ("csv", "pdf", "png")]
    for e in ("csv", "pdf", "png"):
        assert (tmp_path / f"{name}.{e}").stat().st_size > 100


# ------------------------------------------------------------------ figure 4


def fig4_runs(seeds=SEEDS, temperature=0.2):
    """20 negatives per query, cut 95: the hardest one per query is always
    same-class with WordNet 6 + seed; of the 19 easy ones, seed + 1 are
    same-class, and all have WordNet 2."""
    q, n = 8, 20
    runs = {}
    for s in seeds:
        r = ranks(q, n, s)
        runs[(temperature, s)] = dict(
            percentile=100 * r / n,
            same_class=(r == n - 1) | (r < s + 1),
            wordnet=np.where(r == n - 1, 6.0 + s, 2.0),
            difficulty=r / n,
        )
    return runs


def test_fig4_known_fractions_and_scipy_p_values(tmp_path):
    table = fig4(pairs_table(fig4_runs()), tmp_path / "fig4", hard_cut=95)
    assert_files(tmp_path, "fig4")
    t = table.set_index(["panel", "group"])
    assert set(t.index) == {(p, g) for p in "ab" for g in ("hardest 5%", "easiest 95%")}
    assert t.loc[("a", "hardest 5%"), "mean"] == 1.0 and t.loc[("a", "hardest 5%"), "std"] == 0.0
    assert t.loc[("a", "easiest 95%"), "mean"] == pytest.approx(2 / 19)
    assert t.loc[("a", "easiest 95%"), "std"] == pytest.approx(1 / 19)
    assert t.loc[("b", "hardest 5%"), "mean"] == pytest.approx(7.0)
    assert t.loc[("b", "hardest 5%"), "std"] == pytest.approx(1.0)
    assert t.loc[("b", "easiest 95%"), "mean"] == 2.0
    assert (t["n"] == 3).all()
    p_a = ttest_ind([1.0, 1.0, 1.0], [1 / 19, 2 / 19, 3 / 19]).pvalue
    p_b = ttest_ind([6.0, 7.0, 8.0], [2.0, 2.0, 2.0]).pvalue
    assert t.loc["a", "p_value"].tolist() == pytest.approx([p_a, p_a])
    assert t.loc["b", "p_value"].tolist() == pytest.approx([p_b, p_b])
    # the CSV is the returned table
    csv = pd.read_csv(tmp_path / "fig4.csv")
    assert csv["p_value"].tolist() == pytest.approx(table["p_value"].tolist())
    assert csv.temperature.unique().tolist() == [0.2]


def test_fig4_cut_moves_the_groups(tmp_path):
    """Cut 90: the hardest two per query, of which one is same-class."""
    table = fig4(pairs_table(fig4_runs()), tmp_path / "fig4", hard_cut=90)
    hard = table[(table.panel == "a") & (table.group == "hardest 10%")]
    assert hard["mean"].item() == 0.5
    easy = table[(table.panel == "a") & (table.group == "easiest 90%")]
    assert easy["mean"].item() == pytest.approx(np.mean([(s + 1) / 18 for s in SEEDS]))


def test_fig4_temperatures_apart_and_one_seed_has_no_p_value(tmp_path):
    runs = {**fig4_runs(temperature=0.2), **fig4_runs(seeds=(0,), temperature=0.07)}
    table = fig4(pairs_table(runs), tmp_path / "fig4")
    assert sorted(table.temperature.unique()) == [0.07, 0.2]
    low = table[table.temperature == 0.07]
    assert (low["n"] == 1).all() and low["std"].isna().all() and low["p_value"].isna().all()
    assert table[table.temperature == 0.2]["p_value"].notna().all()


def test_missing_columns_are_named(tmp_path):
    with pytest.raises(ValueError, match="wordnet"):
        fig4(pairs_table(fig4_runs()).drop(columns="wordnet"), tmp_path / "fig4")


# ------------------------------------------------------------------ figure 5


def test_fig5_decile_means_by_hand(tmp_path):
    """20 negatives: two per decile per query (ranks 2k, 2k+1)."""
    q, n = 6, 20
    runs = {}
    for s in SEEDS:
        r = ranks(q, n, s)
        runs[(0.2, s)] = dict(
            percentile=100 * r / n, difficulty=(r - 10) / 10, wordnet=r + s, same_class=(r == 0) | (r % 4 == 1)
        )
    table = fig5(pairs_table(runs), tmp_path / "fig5", inset_percentile=5)
    assert_files(tmp_path, "fig5")
    dec = {p: table[table.panel == p].reset_index(drop=True) for p in ("a", "b", "c")}
    for p in dec:
        assert dec[p].x.tolist() == [f"{10 * k}-{10 * k + 10}%" for k in range(10)]
    k = np.arange(10)
    assert dec["c"]["mean"].to_numpy() == pytest.approx((2 * k + 0.5 - 10) / 10)
    assert dec["b"]["mean"].to_numpy() == pytest.approx(2 * k + 0.5 + 1)  # + mean seed
    assert dec["b"]["std"].to_numpy() == pytest.approx(np.ones(10))  # std of seeds 0, 1, 2
    # same class: rank 0, and ranks 1, 5, 9, ... (odd ranks 2k+1 with k even)
    expect_a = [1.0 if j == 0 else 0.5 if j % 2 == 0 else 0.0 for j in k]
    assert dec["a"]["mean"].tolist() == pytest.approx(expect_a)
    inset = table[table.panel == "a inset"]
    assert inset.x.tolist() == ["0-5%", "5-10%"] and inset["mean"].tolist() == [1.0, 1.0]
    assert (table["n"] == 3).all()


def test_fig5_inset_resolves_the_easiest_negatives(tmp_path):
    q, n = 4, 100
    r = ranks(q, n)
    runs = {(0.2, s): dict(percentile=100 * r / n, same_class=r == 0) for s in SEEDS}
    table = fig5(pairs_table(runs), tmp_path / "fig5", inset_percentile=1)
    inset = table[table.panel == "a inset"]
    assert inset.x.tolist() == [f"{i}-{i + 1}%" for i in range(10)]
    assert inset["mean"].tolist() == [1.0] + [0.0] * 9
    assert table[(table.panel == "a") & (table.x == "0-10%")]["mean"].item() == pytest.approx(0.1)


# ------------------------------------------------------------------ figure 6


def fig6_runs(planted: int, q=200, n=100):
    """Random difficulties; the first ``planted`` negatives are the hardest for every query."""
    runs = {}
    for s in SEEDS:
        d = np.random.default_rng(s).random((q, n)).astype(np.float32)
        d[:, :planted] += 2.0
        pct = analysis.percentile_ranks(torch.from_numpy(d)).numpy()
        runs[(0.2, s)] = dict(difficulty=d, percentile=pct)
    return runs


def test_fig6_planted_hard_negatives_broaden_the_real_distribution(tmp_path):
    table = fig6(pairs_table(fig6_runs(planted=5)), tmp_path / "fig6", hard_cut=95, null_seed=0)
    assert_files(tmp_path, "fig6")
    spread = table[table.panel == "spread"].set_index(["measure", "model"])
    std = spread.xs("std over negatives (% of queries)")
    # trained: 5 of 100 negatives hard for every query, the rest for none
    assert std.loc["trained", "mean"] == pytest.approx(100 * np.sqrt(0.05 * 0.95), rel=1e-5)
    # null: binomial(200, 5%) / 200 per negative
    assert 0.5 < std.loc["null", "mean"] / (100 * np.sqrt(0.05 * 0.95 / 200)) < 1.5
    assert std.loc["trained", "p_value"] < 1e-6
    # both keep every query's 5 hard negatives: the mean over negatives is 5% exactly
    mean = spread.xs("mean over negatives (% of queries)")
    assert mean["mean"].tolist() == pytest.approx([5.0, 5.0])
    hist = table[table.panel == "histogram"]
    for _, h in hist.groupby("model"):
        assert h["mean"].sum() == pytest.approx(100.0)  # % of negatives
    trained = hist[hist.model == "trained"]
    assert trained["mean"].iloc[0] == pytest.approx(95.0) and trained["mean"].iloc[-1] == pytest.approx(5.0)
    assert trained.hi.iloc[-1] == 100.0 and trained.lo.iloc[0] == 0.0


def test_fig6_random_difficulties_match_the_null(tmp_path):
    table = fig6(pairs_table(fig6_runs(planted=0)), tmp_path / "fig6")
    std = table[table.measure == "std over negatives (% of queries)"].set_index("model")["mean"]
    assert 0.7 < std["trained"] / std["null"] < 1.4


def test_fig6_null_shuffles_each_querys_difficulties(tmp_path, monkeypatch):
    """The null model gets the run's [Q, N] difficulties and keeps each row's multiset."""
    calls = []
    real = analysis.shuffle_within_queries

    def spy(d, seed):
        out = real(d, seed)
        calls.append((d.clone(), out.clone(), seed))
        return out

    monkeypatch.setattr(analysis, "shuffle_within_queries", spy)
    runs = fig6_runs(planted=3, q=30, n=40)
    fig6(pairs_table(runs), tmp_path / "fig6", null_seed=7)
    assert [seed for *_, seed in calls] == [7 + s for s in SEEDS]
    for (d, out, _), s in zip(calls, SEEDS):
        assert np.array_equal(d.numpy(), runs[(0.2, s)]["difficulty"])
        assert torch.equal(out.sort(dim=1).values, d.sort(dim=1).values)
        assert not torch.equal(out, d)


def test_fig6_needs_every_pair(tmp_path):
    pairs = pairs_table(fig6_runs(planted=0, q=10, n=20))
    with pytest.raises(ValueError, match="every \\(query, negative\\) pair once"):
        fig6(pairs.iloc[1:], tmp_path / "fig6")


# ------------------------------------------------------------------ tables A4-A6

#: mean dot product of a query of class a with a negative of class b (a != b)
DOT = {
    (0, 1): -0.4,
    (1, 0): -0.6,
    (0, 2): 0.3,
    (2, 0): 0.3,
    (0, 3): 0.01,
    (3, 0): 0.01,
    (1, 2): 0.9,
    (2, 1): 0.9,
    (1, 3): -0.02,
    (3, 1): -0.02,
    (2, 3): -0.2,
    (3, 2): -0.2,
}


#: WordNet similarity of the classes
SIM = np.array([[9, 3, 4, 5], [3, 8, 6, 2], [4, 6, 9, 7], [5, 2, 7, 9]])


def tables_runs():
    q_lab, n_lab = np.arange(8) % 4, np.arange(12) % 4
    runs = {}
    for s in SEEDS:
        d = np.array([[0.99 if a == b else DOT[a, b] + 0.01 * (s - 1) for b in n_lab] for a in q_lab])
        runs[(0.2, s)] = dict(
            query_label=np.repeat(q_lab[:, None], 12, 1),
            negative_label=np.tile(n_lab, (8, 1)),
            difficulty=d,
            percentile=ranks(8, 12) * 100 / 12,
            wordnet=SIM[np.ix_(q_lab, n_lab)],
            same_class=q_lab[:, None] == n_lab[None],
        )
    return runs


def test_tables_pick_class_pairs_by_mean_dot_product(tmp_path):
    names = ["cat", "dog", "car", "ship"]
    table = tables_a4_a6(pairs_table(tables_runs()), tmp_path / "tables_a4_a6", rows=2, class_names=names)
    assert_files(tmp_path, "tables_a4_a6")
    pick = {k: list(zip(d.class_a, d.class_b)) for k, d in table.groupby("table")}
    assert pick == {"A4": [(0, 1), (2, 3)], "A5": [(1, 2), (0, 2)], "A6": [(0, 3), (1, 3)]}
    a4 = table[table.table == "A4"]
    # both directions pooled (float32 difficulties)
    assert a4["mean"].tolist() == pytest.approx([-0.5, -0.2], rel=1e-5)
    assert a4["std"].tolist() == pytest.approx([0.01, 0.01], rel=1e-4)  # seeds shift by -0.01, 0, +0.01
    assert a4.name_a.tolist() == ["cat", "car"] and a4.name_b.tolist() == ["dog", "ship"]
    assert table.wordnet.tolist() == [SIM[a, b] for a, b in zip(table.class_a, table.class_b)]
    assert table["rank"].tolist() == [1, 2] * 3 and (table["n"] == 3).all()
    assert set(table.title) == {
        "most anti-correlated class pairs",
        "most correlated class pairs",
        "most orthogonal class pairs",
    }


def test_tables_without_names_use_indices(tmp_path):
    table = tables_a4_a6(pairs_table(tables_runs()), tmp_path / "t", rows=10)
    assert len(table) == 3 * 6  # every pair of 4 classes, at most rows each
    assert table.name_a.iloc[0] == str(table.class_a.iloc[0])


# ------------------------------------------------------------------ through files


def write_pairs(path, cols, temperature, seed):
    df = pairs_table({(temperature, seed): cols}).drop(columns=["run_seed", "temperature", "policy"])
    at = pa.Table.from_pandas(df, preserve_index=False)
    meta = {"dataset": "fashion-mnist", "method": "moco", "policy": "all", "temperature": temperature, "seed": seed}
    at = at.replace_schema_metadata({k.encode(): json.dumps(v).encode() for k, v in meta.items()})
    pq.write_table(at, path)
    return str(path)


# 12 negatives per query: the hardest 10% is one of them
FIGURE_CONFIG = {
    "figures": {
        "fig4": {"hard_cut": 90},
        "fig5": {"inset_percentile": 5},
        "fig6": {"hard_cut": 90, "null_seed": 0},
        "tables_a4_a6": {"rows": 2},
    }
}


def test_build_and_cli_draw_every_analysis_figure(tmp_path, capsys):
    runs = tables_runs()
    paths = [write_pairs(tmp_path / f"seed{s}.parquet", runs[(0.2, s)], 0.2, s) for s in SEEDS]
    sim = tmp_path / "wordnet_similarity.tsv"
    names = ["cat", "dog", "car", "ship"]
    sim.write_text("\t".join(["class", *names]) + "\n" + "".join(f"{c}\t1\t1\t1\t1\n" for c in names))
    for name in ("fig4", "fig5", "fig6"):
        table = build(name, paths, tmp_path / "out" / name, FIGURE_CONFIG)
        assert len(pd.read_csv(tmp_path / "out" / f"{name}.csv")) == len(table)
        assert (table["n"] == 3).all()
    assert (
        main(
            [
                "figure",
                "tables_a4_a6",
                "--config-json",
                json.dumps(FIGURE_CONFIG),
                "--probes",
                *paths,
                str(sim),
                "--out",
                str(tmp_path / "out" / "tables_a4_a6"),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out.splitlines()  # what it is doing, then what it wrote
    assert out[0] == f"drawing tables_a4_a6 from {len(paths) + 1} files" and out[-1].startswith("wrote ")
    csv = pd.read_csv(tmp_path / "out" / "tables_a4_a6.csv")
    assert csv[csv.table == "A4"].name_a.tolist() == ["cat", "car"]
    assert written(tmp_path / "out") == sorted(
        f"{f}.{e}" for f in ("fig4", "fig5", "fig6", "tables_a4_a6") for e in ("csv", "pdf", "png")
    )
