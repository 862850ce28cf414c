"""A tiny real run of the workflow: a few hundred images, a few steps, two
seeds; `snakemake fig2 fig4 fig5 fig6 tables_a4_a6` must produce Figure 2's
and the Section 4 analyses' files from real jobs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import yaml
from conftest import ROOT, fake_fashion_mnist

from negatives.grid import ANALYSES


def tiny_config(tmp_path):
    cfg = yaml.safe_load((ROOT / "config.yaml").read_text())
    cfg["datasets"]["fashion-mnist"].update(
        root=str(fake_fashion_mnist(tmp_path / "fmnist", 320, 100)), train_images=300, test_images=100
    )
    cfg["seeds"] = [0, 1]
    cfg["pretrain"].update(epochs=1, batch_size=32, queue_size=128, width=4, dim=16, knn_monitor=100)
    cfg["evaluate"].update(fewshot_labels_per_class=2, knn_k=20)
    cfg["figures"]["fig2"] = {"segments": ["keep[95_100)", "keep[90_95)"], "easiest": ["keep[0_95)"]}
    cfg["analysis"].update(queries=100, negatives=120, dynamics_queries=50, dynamics_negatives=60)
    # every figure's policies sized for K = 128 queued / 62 in-batch negatives
    cfg["pretrain"]["queue_extra"] = 64
    cfg["figures"]["fig3"] = {"removed": ["drop[99_100)", "drop[95_100)"]}
    cfg["figures"]["table1"] = {"removed": ["drop-same-class@replace", "drop[95_100)&other-class@replace"]}
    cfg["figures"]["simclr"] = {"policies": ["keep[95_100)"]}
    cfg["figures"]["fig_methods"] = {"policies": ["mochi[16_8_4]", "hard[1_0.1]"], "band": "drop[95_100)"}
    return cfg


def test_tiny_workflow_builds_fig2_and_the_analyses(tmp_path):
    cfg = tiny_config(tmp_path)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        "--snakefile",
        str(ROOT / "Snakefile"),
        "--directory",
        str(tmp_path),
        "--cores",
        "2",
        "fig2",
        *ANALYSES,
    ]
    # the jobs call `python`: the interpreter running the tests
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    figures = tmp_path / "results" / "figures"
    for ext in ("pdf", "png", "csv"):
        assert (figures / f"fig2.{ext}").stat().st_size > 0
    table = pd.read_csv(figures / "fig2.csv")
    assert set(table["policy"]) == {"all", "keep[95_100)", "keep[90_95)", "keep[0_95)", "random-init"}
    assert (table.loc[table["metric"].str.endswith("top1"), "n"] == 2).all()

    # every training run logged its epoch and kept the right number of negatives per query
    run = tmp_path / "results" / "fashion-mnist" / "moco" / "keep[95_100)" / "t0.2" / "seed1"
    log = pd.read_csv(run / "train_log.csv")
    assert list(log["epoch"]) == [1] and log["negatives_kept"].iloc[0] == round(128 * 5 / 100)
    probe = json.loads((run / "probe.json").read_text())
    assert probe["policy"] == "keep[95_100)" and probe["seed"] == 1 and 0 <= probe["knn_top1"] <= 100

    # the Section 4 analyses: the baseline runs, 100 queries x 120 negatives each
    pairs = pd.read_parquet(
        tmp_path / "results" / "fashion-mnist" / "moco" / "all" / "t0.2" / "seed1" / "analysis" / "pairs.parquet"
    )
    assert len(pairs) == 100 * 120
    for name in ANALYSES:
        for ext in ("pdf", "png", "csv"):
            assert (figures / f"{name}.{ext}").stat().st_size > 0
    fig4 = pd.read_csv(figures / "fig4.csv")
    assert set(fig4.group) == {"hardest 5%", "easiest 95%"} and (fig4.n == 2).all() and fig4.p_value.notna().all()
    tables = pd.read_csv(figures / "tables_a4_a6.csv")
    assert set(tables.name_a) <= {
        "T-shirt/top",
        "Trouser",
        "Pullover",
        "Dress",
        "Coat",
        "Sandal",
        "Shirt",
        "Sneaker",
        "Bag",
        "Ankle boot",
    }

    # a second invocation has nothing to do: nothing computed is redone
    again = subprocess.run(cmd + ["-n"], capture_output=True, text=True, timeout=300, env=env)
    assert "Nothing to be done" in again.stdout + again.stderr
    # nor when a rule's command reads differently (a new speed-only flag, say): the
    # workflow's profile leaves out Snakemake's code trigger
    for record in (tmp_path / ".snakemake" / "metadata").iterdir():
        meta = json.loads(record.read_text())
        if meta.get("code"):
            record.write_text(json.dumps({**meta, "code": meta["code"] + " --a-new-flag"}))
    again = subprocess.run(cmd + ["-n"], capture_output=True, text=True, timeout=300, env=env)
    assert "Nothing to be done" in again.stdout + again.stderr, again.stdout + again.stderr

    # a damaged input (a truncated probe.json, a pairs table cut short) stops the workflow
    # before any job: the figures built from them keep their previous files
    built = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in figures.iterdir()}
    for damaged in (
        run / "probe.json",
        tmp_path / "results" / "fashion-mnist" / "moco" / "all" / "t0.2" / "seed0" / "analysis" / "pairs.parquet",
    ):
        intact = damaged.read_bytes()
        damaged.write_bytes(intact[: len(intact) // 2])
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
        out = proc.stdout + proc.stderr
        assert (
            proc.returncode != 0
            and f"{damaged.relative_to(tmp_path)} is damaged: {len(intact) // 2} bytes, but {len(intact)} were written"
            in out
            and "delete it and run the workflow again" in out
        ), out[-3000:]
        assert "Building DAG" not in out and "Traceback" not in out, out[-3000:]
        assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in figures.iterdir()} == built
        damaged.write_bytes(intact)


def test_tiny_workflow_builds_fig3_table1_simclr_and_methods(tmp_path):
    cfg = tiny_config(tmp_path)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        "--snakefile",
        str(ROOT / "Snakefile"),
        "--directory",
        str(tmp_path),
        "--cores",
        "2",
        "fig3",
        "table1",
        "simclr",
        "fig_methods",
    ]
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    figures = tmp_path / "results" / "figures"
    for name in ("fig3", "table1", "simclr", "fig_methods"):
        for ext in ("pdf", "png", "csv"):
            assert (figures / f"{name}.{ext}").stat().st_size > 0
    fig3 = pd.read_csv(figures / "fig3.csv")
    assert set(fig3.policy) == {"all", "drop[99_100)", "drop[95_100)"}
    assert fig3.loc[fig3.policy != "all", "p_value"].notna().all() and (fig3.n == 2).all()
    table1 = pd.read_csv(figures / "table1.csv").drop_duplicates("policy").set_index("policy")
    assert table1.loc["drop-same-class@replace", "uses_labels"] and not table1.loc["all", "uses_labels"]

    # replace mode: every query saw exactly K negatives; the label-using run says so
    run = tmp_path / "results" / "fashion-mnist" / "moco" / "drop-same-class@replace" / "t0.2" / "seed0"
    assert pd.read_csv(run / "train_log.csv")["negatives_kept"].iloc[0] == 128
    assert json.loads((run / "probe.json").read_text())["uses_labels"] is True
    # SimCLR: 2 x 32 - 2 = 62 candidates, the hardest 5% = 3 of them
    run = tmp_path / "results" / "fashion-mnist" / "simclr" / "keep[95_100)" / "t0.2" / "seed1"
    assert pd.read_csv(run / "train_log.csv")["negatives_kept"].iloc[0] == 3
    assert json.loads((run / "probe.json").read_text())["method"] == "simclr"
    # the methods: MoCHi adds 8 + 4 synthetic negatives to the 128; each run's training speed is plotted
    run = tmp_path / "results" / "fashion-mnist" / "moco" / "mochi[16_8_4]" / "t0.2" / "seed0"
    assert pd.read_csv(run / "train_log.csv")["negatives_kept"].iloc[0] == 128 + 12
    methods = pd.read_csv(figures / "fig_methods.csv")
    speed = methods[methods.metric == "train_images_per_s"]
    assert set(speed.policy) == {"all", "drop[95_100)", "mochi[16_8_4]", "hard[1_0.1]"} and (speed["mean"] > 0).all()
