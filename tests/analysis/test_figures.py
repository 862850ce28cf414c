import json

import numpy as np
import pandas as pd
import pytest
from conftest import written

from negatives.analysis.figures import against_baseline, fig2, load_probes, summarize
from negatives.figure_registry import build

SEGMENTS = ["keep[90_95)", "keep[95_100)", "keep[85_90)"]  # deliberately not hardest-first
EASIEST = ["keep[0_95)", "keep[0_90)"]
METRICS = [f"{e}_{k}" for e in ("linear", "fewshot", "knn") for k in ("top1", "top5")]


def _probe(policy, temperature, seed, rng):
    p = {
        "dataset": "fashion-mnist",
        "method": "moco",
        "policy": policy,
        "temperature": temperature,
        "seed": seed,
        "uses_labels": False,
        "epochs": 0 if policy == "random-init" else 20,
        "fewshot_labels_per_class": 10,
        "fewshot_draws": 5,
        "evaluation": {
            "probe": "fast",
            "knn_k": 200,
            "knn_temperature": 0.1,
            "fewshot_labels_per_class": 10,
            "fewshot_draws": 5,
        },
    }
    p.update({m: float(rng.uniform(40, 99)) for m in METRICS})
    return p


@pytest.fixture
def probe_files(tmp_path):
    rng = np.random.default_rng(0)
    paths = []
    runs = [(p, 0.2) for p in ["all", *SEGMENTS, *EASIEST, "drop[99_100)"]] + [("random-init", None)]
    for policy, t in runs:
        for seed in range(3):
            path = tmp_path / "probes" / f"{policy}-{seed}.json"
            path.parent.mkdir(exist_ok=True)
            path.write_text(json.dumps(_probe(policy, t, seed, rng)))
            paths.append(path)
    return paths


def test_load_probes_one_row_per_file(probe_files):
    df = load_probes(probe_files)
    assert len(df) == len(probe_files)
    assert df.loc[df.policy == "random-init", "temperature"].isna().all()
    assert df["linear_top1"].dtype == float


def test_summarize_keeps_nan_std_for_one_seed(probe_files):
    df = load_probes(probe_files)
    one = df[(df.policy == "all") & (df.seed == 0)]
    s = summarize(one, ["linear_top1"])
    assert s.n.tolist() == [1] and np.isnan(s["std"].iloc[0])
    with pytest.raises(ValueError, match="duplicate"):
        summarize(pd.concat([one, one]), ["linear_top1"])


def test_fig2_writes_files_and_csv_matches_pandas(probe_files, tmp_path):
    df = load_probes(probe_files)
    out = tmp_path / "figs" / "fig2"
    table = fig2(df, out, SEGMENTS, EASIEST)
    for ext in ("pdf", "png", "csv"):
        assert (tmp_path / "figs" / f"fig2.{ext}").stat().st_size > 1000
    assert written(tmp_path / "figs") == ["fig2.csv", "fig2.pdf", "fig2.png"]

    csv = pd.read_csv(f"{out}.csv")
    assert len(csv) == len(table)
    # x order: segments hardest first, easiest x increasing, then the references
    a = csv[(csv.panel == "a") & (csv.evaluation == "linear")]
    assert a.x.tolist() == ["95-100%", "90-95%", "85-90%", "baseline", "random init"]
    c = csv[(csv.panel == "c") & (csv.evaluation == "knn")]
    assert c.x.tolist() == ["0-90%", "0-95%", "baseline", "random init"]
    assert set(csv.panel) == set("abcd") and set(csv.evaluation) == {"linear", "fewshot", "knn"}
    assert "drop[99_100)" not in set(csv.policy)
    assert (csv.metric.str.endswith("top1") == csv.panel.isin(["a", "c"])).all()

    # every row equals pandas' mean / std (ddof=1) over the three seeds of the input probes
    for r in csv.itertuples():
        vals = df.loc[df.policy == r.policy, r.metric]
        assert r.n == 3 == len(vals)
        assert r.mean == pytest.approx(vals.mean(), rel=1e-12)
        assert r.std == pytest.approx(vals.std(ddof=1), rel=1e-12)


def test_fig2_names_missing_policies(probe_files, tmp_path):
    df = load_probes(probe_files)
    df = df[~df.policy.isin(["keep[85_90)", "random-init"])]
    with pytest.raises(ValueError, match=r"keep\[85_90\).*random-init"):
        fig2(df, tmp_path / "fig2", SEGMENTS, EASIEST)
    assert not list(tmp_path.glob("fig2*"))


def test_fig2_several_temperatures_and_no_top5(probe_files, tmp_path):
    df = load_probes(probe_files)
    hot = df[df.policy != "random-init"].assign(temperature=0.07)
    df = pd.concat([df, hot], ignore_index=True)
    df[[m for m in METRICS if m.endswith("top5")]] = np.nan  # a dataset with <= 5 classes
    table = fig2(df, tmp_path / "fig2", SEGMENTS, EASIEST)
    a = table[(table.panel == "a") & (table.evaluation == "linear")]
    assert sorted(a.temperature.dropna().unique()) == [0.07, 0.2]
    assert table.loc[table.panel.isin(["b", "d"]), "n"].eq(0).all()
    with pytest.raises(ValueError, match=r"keep\[0_90\) \(t=0.07\)"):
        fig2(df[~((df.policy == "keep[0_90)") & (df.temperature == 0.07))], tmp_path / "x", SEGMENTS, EASIEST)


def test_fig2_rejects_non_keep_policies(probe_files, tmp_path):
    with pytest.raises(ValueError, match="keep"):
        fig2(load_probes(probe_files), tmp_path / "fig2", ["drop[99_100)"], EASIEST)
    with pytest.raises(ValueError, match="easiest"):
        fig2(load_probes(probe_files), tmp_path / "fig2", SEGMENTS, ["keep[5_95)"])


def test_build_dispatches_with_config_section(probe_files, tmp_path):
    cfg = {"figures": {"fig2": {"segments": SEGMENTS, "easiest": EASIEST}}}
    table = build("fig2", [str(p) for p in probe_files], str(tmp_path / "fig2"), cfg)
    assert (tmp_path / "fig2.png").exists() and len(table) == len(pd.read_csv(tmp_path / "fig2.csv"))
    with pytest.raises(ValueError, match="unknown figure 'fig9'; allowed: fig2"):
        build("fig9", probe_files, tmp_path / "x", cfg)
    with pytest.raises(KeyError, match="figures.fig2"):
        build("fig2", probe_files, tmp_path / "x", {})


def test_against_baseline_p_values_match_scipy():
    from scipy.stats import ttest_ind

    base = [70.1, 70.5, 69.8]
    drop = [70.9, 71.2, 70.6]

    def row(policy, seed, value, uses_labels=False):
        return {"policy": policy, "temperature": 0.2, "seed": seed, "linear_top1": value, "uses_labels": uses_labels}

    rows = [row("all", s, v) for s, v in enumerate(base)] + [row("drop[99.9_100)", s, v) for s, v in enumerate(drop)]
    rows += [row("drop-same-class@replace", s, v, uses_labels=True) for s, v in enumerate([71.0, 71.1])]
    table = against_baseline(
        pd.DataFrame(rows), {"drop[99.9_100)": "hardest 0.1%", "drop-same-class@replace": "same class"}
    )
    r = table.set_index("policy")
    assert r.loc["drop[99.9_100)", "p_value"] == pytest.approx(ttest_ind(drop, base).pvalue, rel=1e-12)
    assert r.loc["drop[99.9_100)", "delta"] == pytest.approx(np.mean(drop) - np.mean(base))
    assert r.loc["drop[99.9_100)", "std"] == pytest.approx(np.std(drop, ddof=1))
    assert r.loc["drop-same-class@replace", "n"] == 2 and r.loc["drop-same-class@replace", "uses_labels"]
    assert np.isnan(r.loc["all", "p_value"]) and r.loc["all", "delta"] == 0
    with pytest.raises(ValueError, match="missing"):
        against_baseline(pd.DataFrame(rows), {"drop[99_100)": "hardest 1%"})
