"""fig_dynamics (negatives.analysis.dynamics_figures): every run's every
epoch in its table, the summary over seeds equal to the runs' own numbers,
the runs of Figure 2, and a damaged input refused naming it."""

from pathlib import Path

import pandas as pd
import pytest

from negatives import grid
from negatives.analysis.dynamics_figures import dynamics_table, fig_dynamics, load_training
from negatives.config_files import read_config
from negatives.methods.shares import GROUPS
from negatives.training.pretrain import pretrain

SETTINGS = dict(
    backbone="small-cnn", width=4, dim=8, epochs=3, batch_size=16, queue_size=32, bn_splits=2, knn_monitor=0, threads=1
)
POLICIES, SEEDS = ("all", "keep[50_100)"), (0, 1)


@pytest.fixture(scope="module")
def logs(data_path, tmp_path_factory):
    """The train_log.csv of tiny real runs, where the workflow puts them."""
    root = tmp_path_factory.mktemp("results")
    out = []
    for policy in POLICIES:
        for seed in SEEDS:
            run = root / "fashion-mnist" / "moco" / policy / "t0.2" / f"seed{seed}"
            pretrain(data_path, "moco", policy, 0.2, seed, {**SETTINGS, "share_queries": 4}, run, log=lambda m: None)
            out.append(run / "train_log.csv")
    return out


def test_the_table_holds_every_run_and_epoch_and_their_summary(logs, tmp_path):
    runs = load_training(logs)
    assert sorted(set(zip(runs.policy, runs.seed))) == sorted((p, s) for p in POLICIES for s in SEEDS)
    table = fig_dynamics(runs, tmp_path / "fig_dynamics")
    assert all((tmp_path / f"fig_dynamics.{ext}").stat().st_size > 0 for ext in ("pdf", "png", "csv"))
    written = pd.read_csv(tmp_path / "fig_dynamics.csv")
    assert list(written.columns) == list(table.columns) and len(written) == len(table)
    pd.testing.assert_series_equal(written["value"], table["value"].astype(float), check_names=False)
    every = table[table.seed.notna()]
    quantities = {"loss"} | {f"share_{g}" for g in GROUPS}  # every share, drawn or not; kNN monitor off
    assert set(every.quantity) == quantities
    for q in quantities:  # every run, every epoch, a number
        part = every[every.quantity == q]
        assert len(part) == len(POLICIES) * len(SEEDS) * 3 and part.value.notna().all()
    summary = table[table.seed.isna()].set_index(["quantity", "policy", "epoch"]).sort_index()
    for (q, policy, epoch), row in summary.iterrows():
        values = every[(every.quantity == q) & (every.policy == policy) & (every.epoch == epoch)].value
        assert row["mean"] == pytest.approx(values.mean()) and row["n"] == 2
        assert row["min"] == values.min() and row["max"] == values.max()
    # keep[50_100): its gradient goes to the hardest half only
    easy = summary.loc[("share_easiest_50", "keep[50_100)")]
    assert (easy["max"] == 0).all() and (summary.loc[("share_easiest_50", "all")]["min"] > 0).all()


def test_runs_whose_logs_lack_the_shares_are_named(logs, tmp_path):
    old = tmp_path / "fashion-mnist" / "moco" / "all" / "t0.2" / "seed7" / "train_log.csv"
    old.parent.mkdir(parents=True)
    table = pd.read_csv(logs[0])
    table.drop(columns=[c for c in table if c.startswith("share_")]).to_csv(old, index=False)
    from negatives.analysis import dynamics_figures

    runs = load_training([*logs, old])
    said = []
    real_text = dynamics_figures.plt.Figure.text
    dynamics_figures.plt.Figure.text = lambda self, x, y, s, **kw: said.append(s) or real_text(self, x, y, s, **kw)
    try:
        fig_dynamics(runs, tmp_path / "fig")
    finally:
        dynamics_figures.plt.Figure.text = real_text
    assert [s for s in said if s.startswith("no gradient")] == ["no gradient shares in the log of all/t0.2/seed7"]


def test_section_4_at_the_saved_epochs_joins_each_runs_rows(logs, tmp_path):
    run = tmp_path / "fashion-mnist" / "moco" / "all" / "t0.2" / "seed0"
    (run / "analysis").mkdir(parents=True)
    (run / "train_log.csv").write_bytes(logs[0].read_bytes())
    dynamics = pd.DataFrame(
        {
            "dataset": "fashion-mnist",
            "method": "moco",
            "policy": "all",
            "temperature": 0.2,
            "seed": 0,
            "epoch": [1, 3],
            "same_class_hardest_5": [0.2, 0.3],
            "wordnet_hardest_5": [7.0, 7.5],
            "hard_spread": [1.1, 1.4],
            "hard_spread_null": [0.5, 0.5],
            **{f"cosine_decile_{d}": [d / 10, d / 9] for d in range(10)},
        }
    )
    dynamics.to_csv(run / "analysis" / "dynamics.csv", index=False)
    runs = load_training([run / "train_log.csv", run / "analysis" / "dynamics.csv"])
    assert runs.epoch.tolist() == [1, 2, 3] and runs.policy.tolist() == ["all"] * 3
    assert runs.s4_same_class_hardest_5.tolist()[::2] == [0.2, 0.3] and runs.s4_hard_spread.isna().tolist()[1]
    assert runs.loss.tolist() == pd.read_csv(logs[0]).loss.tolist()  # the log's rows as they were
    table = fig_dynamics(runs, tmp_path / "fig")
    every = table[table.seed.notna()]
    assert {f"s4_{c}" for c in dynamics if c.startswith(("same", "wordnet", "hard", "cosine"))} <= set(every.quantity)
    assert every[every.quantity == "s4_wordnet_hardest_5"].value.tolist() == [7.0, 7.5]


def test_the_summary_by_hand():
    runs = pd.DataFrame(
        {"policy": ["all"] * 3, "temperature": 0.2, "seed": [0, 1, 0], "epoch": [1, 1, 2], "x": [0.2, 0.4, None]}
    )
    got = dynamics_table(runs, ["x"])
    assert got[["epoch", "mean", "min", "max", "n"]].values.tolist() == [[1, pytest.approx(0.3), 0.2, 0.4, 2]]


def test_a_path_that_is_no_runs_log_is_refused_naming_it(logs, tmp_path):
    bad = tmp_path / "notes.csv"
    bad.write_text("epoch\n1\n")
    with pytest.raises(ValueError, match=f"^{bad}: not a run's train_log.csv"):
        load_training([*logs, bad])
    damaged = tmp_path / "fashion-mnist" / "moco" / "all" / "t0.2" / "seed9" / "train_log.csv"
    damaged.parent.mkdir(parents=True)
    damaged.write_bytes(b'"epoch\n\x00')
    with pytest.raises(ValueError, match=f"^{damaged}: cannot be read as a table"):
        load_training([damaged])


def test_the_figure_draws_figure_2s_runs():
    cfg = read_config(Path(grid.__file__).parents[2] / "config.yaml")
    assert grid.figure_policies(cfg, "fig_dynamics") == grid.figure_policies(cfg, "fig2")
    assert grid.figure_temperatures(cfg, "fig_dynamics") == grid.figure_temperatures(cfg, "fig2")
    inputs = grid.figure_inputs(cfg, "fig_dynamics")
    runs = grid.runs_for(cfg, "fig2")  # their logs, then their Section 4 at the saved epochs
    assert inputs == [f"{run.dir()}/train_log.csv" for run in runs] + [
        f"{run.dir()}/analysis/dynamics.csv" for run in runs
    ]
