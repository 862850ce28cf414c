"""The Snakemake layer: the jobs a dry run plans, errors before any job, lint,
and negatives.grid (which runs each figure needs)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import jinja2
import pytest
import yaml
from conftest import fake_fashion_mnist

from negatives import grid
from negatives.figure_registry import record
from negatives.policies import PolicyError

ROOT = Path(__file__).resolve().parents[2]
SNAKEFILE = ROOT / "Snakefile"


def default_config() -> dict:
    return yaml.safe_load((ROOT / "config.yaml").read_text())


# ---------------------------------------------------------------- the grid


def test_fig2_runs_every_policy_temperature_and_seed():
    cfg = default_config()
    cfg["temperatures"] = [0.07, 0.2]
    runs = grid.runs_for(cfg, "fig2")
    fig = cfg["figures"]["fig2"]
    n_policies = 1 + len(fig["segments"]) + len(fig["easiest"])
    assert len(runs) == len(set(runs)) == n_policies * 2 * len(cfg["seeds"])
    assert {r.policy for r in runs} == {"all", *(p.replace(",", "_") for p in fig["segments"] + fig["easiest"])}
    assert {r.temperature for r in runs} == {0.07, 0.2}


def test_policies_are_canonical_and_deduplicated():
    cfg = default_config()
    cfg["figures"]["fig2"] = {"segments": ["keep[95, 100)", "keep[95.0_100)"], "easiest": ["keep[95_100)", " all "]}
    assert grid.figure_policies(cfg, "fig2") == ["all", "keep[95_100)"]


def test_bad_policy_raises():
    cfg = default_config()
    cfg["figures"]["fig2"]["easiest"] = ["keep[0_101)"]
    with pytest.raises(PolicyError):
        grid.runs_for(cfg, "fig2")


def test_run_dir_and_probe_paths():
    run = grid.Run("fashion-mnist", "moco", "keep[95_100)", 0.07, 2)
    assert run.dir("out") == "out/fashion-mnist/moco/keep[95_100)/t0.07/seed2"
    cfg = default_config()
    probes = grid.figure_probes(cfg, "fig2")
    assert len(probes) == len(set(probes)) == len(grid.runs_for(cfg, "fig2")) + len(grid.random_init_seeds(cfg))
    assert "results/fashion-mnist/moco/all/t0.2/seed0/probe.json" in probes
    assert "results/fashion-mnist/moco/random-init/seed0/probe.json" in probes
    assert grid.figure_outputs(cfg, "fig2") == [f"results/figures/fig2.{e}" for e in ("pdf", "png", "csv")]


def test_analysis_figures_use_the_baseline_runs():
    cfg = default_config()
    cfg.update(temperatures=[0.07, 0.2], seeds=[0, 1])
    for figure in grid.ANALYSES:
        runs = grid.runs_for(cfg, figure)
        assert {(r.policy, r.temperature, r.seed) for r in runs} == {("all", t, s) for t in (0.07, 0.2) for s in (0, 1)}
        pairs = grid.figure_pairs(cfg, figure)
        assert pairs == [f"{r.dir()}/analysis/pairs.parquet" for r in runs]
        extra = ["results/data/fashion-mnist/wordnet_similarity.tsv"] if figure == "tables_a4_a6" else []
        assert grid.figure_inputs(cfg, figure) == pairs + extra
        with pytest.raises(ValueError, match="not from probes"):
            grid.figure_probes(cfg, figure)
    assert "results/fashion-mnist/moco/all/t0.07/seed1/analysis/pairs.parquet" in grid.figure_pairs(cfg, "fig4")
    assert grid.figure_inputs(cfg, "fig2") == grid.figure_probes(cfg, "fig2")
    with pytest.raises(ValueError, match="not from analyses"):
        grid.figure_pairs(cfg, "fig2")
    assert set(grid.ANALYSES) <= set(grid.FIGURES)


def test_unknown_figure():
    with pytest.raises(ValueError, match="allowed: fig2"):
        grid.runs_for(default_config(), "fig99")


def render_caption(figure: str, cfg: dict) -> str:
    text = (ROOT / "workflow" / "report" / f"{figure}.rst").read_text()
    env = jinja2.Environment(undefined=jinja2.StrictUndefined)
    return env.from_string(text).render(snakemake=SimpleNamespace(config=cfg))


def test_fig2_caption_renders():
    """The report caption is a jinja template over snakemake.config."""
    cfg = default_config()
    out = render_caption("fig2", cfg)
    assert cfg["dataset"] in out and cfg["pretrain"]["backbone"] in out
    assert f"**{cfg['pretrain']['epochs']}** epochs" in out


@pytest.mark.parametrize(
    "figure,paper",
    [("fig4", "p = 5.1e-7"), ("fig5", "easiest ~50%"), ("fig6", "broader"), ("tables_a4_a6", "breeds of dog")],
)
def test_analysis_captions_render_setting_and_paper(figure, paper):
    cfg = default_config()
    cfg["figures"]["fig4"]["hard_cut"] = 99.9
    out = " ".join(render_caption(figure, cfg).split())
    assert f"**{cfg['dataset']}**" in out and "2000 quer" in out and "2000 " in out.split("2000 quer")[1]
    assert paper in out
    if figure == "fig4":
        assert "the hardest 0.1% against the easiest 99.9%" in out and "p = 4.8e-7" in out


# ------------------------------------------------------------- dry runs


@pytest.fixture
def workdir(tmp_path):
    """A working directory with the default config.yaml and an override that
    points the dataset root at a tiny fake Fashion-MNIST."""
    shutil.copy(ROOT / "config.yaml", tmp_path / "config.yaml")
    root = fake_fashion_mnist(tmp_path / "fmnist")
    override = {"datasets": {"fashion-mnist": {"root": str(root)}}}
    (tmp_path / "override.yaml").write_text(yaml.safe_dump(override))
    return tmp_path


def snakemake(workdir: Path, *args: str, config: dict | None = None) -> subprocess.CompletedProcess:
    """``snakemake -s Snakefile -d workdir --configfile override.yaml [extra] args``."""
    configfiles = [str(workdir / "override.yaml")]
    if config is not None:
        (workdir / "extra.yaml").write_text(yaml.safe_dump(config))
        configfiles.append(str(workdir / "extra.yaml"))
    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        "-s",
        str(SNAKEFILE),
        "-d",
        str(workdir),
        "--configfile",
        *configfiles,
        *args,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300)


def job_counts(out: str) -> Counter:
    """The ``job count`` table of a dry run."""
    table = out.split("Job stats:", 1)[1].split("total", 1)[0]
    return Counter({m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)\s*$", table, re.M)})


def expected_jobs(cfg: dict, figures) -> Counter:
    """What a dry run must plan, computed from the config."""
    trained, probes, pairs, dynamics = set(), set(), set(), set()
    for figure in figures:
        trained.update(grid.runs_for(cfg, figure))
        if record(figure).dynamics:  # Section 4 at the saved epochs of its runs
            dynamics.update(grid.figure_dynamics(cfg, figure))
        source = record(figure).source
        if source == "analyses":
            pairs.update(grid.figure_pairs(cfg, figure))
        elif source == "probes":
            probes.update(grid.figure_probes(cfg, figure))
    random_init = {p for p in probes if "/random-init/" in p}
    assert len(random_init) == (len(cfg["seeds"]) if probes else 0)
    counts = Counter(
        prepare=1,
        pretrain=len(trained),
        random_init=len(random_init),
        evaluate=len(probes),
        analyze=len(pairs),
        dynamics=len(dynamics),
        similarity=1 if pairs or dynamics else 0,
    )
    counts.update({figure: 1 for figure in figures})
    return +counts  # without the zeros


def test_dry_run_all_plans_every_figure(workdir):
    """The default target, through the local profile."""
    res = snakemake(workdir, "-n", "--profile", str(ROOT / "profiles" / "local"))
    assert res.returncode == 0, res.stdout + res.stderr
    expected = expected_jobs(default_config(), grid.FIGURES) + Counter(all=1)
    assert job_counts(res.stdout + res.stderr) == expected
    # the default config: 23 policies x 1 temperature x 3 seeds (fig2: all + 5
    # bands; fig3: 3 removals; table1: 4 replace-mode removals; simclr: all +
    # 2 bands, SimCLR; fig_methods: 7 methods, its band shared with fig3),
    # + 3 random-init; the analyses: the 3 baseline runs, one similarity
    # matrix, one job per figure
    assert expected["pretrain"] == 69 and expected["evaluate"] == 72
    assert expected["analyze"] == 3 and expected["similarity"] == 1
    assert all(
        expected[f] == 1
        for f in ("fig2", "fig3", "table1", "simclr", "fig_methods", "fig4", "fig5", "fig6", "tables_a4_a6")
    )


def test_dry_run_fig2_and_its_commands(workdir):
    res = snakemake(workdir, "-n", "-p", "fig2")
    out = res.stdout + res.stderr
    assert res.returncode == 0, out
    assert job_counts(out) == expected_jobs(default_config(), ["fig2"])
    # the command lines of docs/INTERFACES.md
    assert "python -m negatives prepare --dataset fashion-mnist --root " in out
    assert "--policy 'keep[95_100)' --temperature 0.2 --seed 0 --settings '{" in out
    assert "--out 'results/fashion-mnist/moco/keep[95_100)/t0.2/seed0'" in out
    assert "python -m negatives init --data results/data/fashion-mnist/data.pt --method moco --seed 1" in out
    assert "--out results/fashion-mnist/moco/random-init/seed1/probe.json" in out
    assert "python -m negatives figure fig2 --config-json '{" in out
    assert "--out results/figures/fig2 >" in out


def test_dry_run_analysis_figures_and_their_commands(workdir):
    res = snakemake(workdir, "-n", "-p", "fig4", "tables_a4_a6")
    out = res.stdout + res.stderr
    assert res.returncode == 0, out
    cfg = default_config()
    assert job_counts(out) == expected_jobs(cfg, ["fig4", "tables_a4_a6"])
    assert "evaluate" not in job_counts(out)  # the analyses need no probes
    sim = "results/data/fashion-mnist/wordnet_similarity.tsv"
    assert f"python -m negatives similarity --classes results/data/fashion-mnist/classes.tsv --out {sim} >" in out
    run = "results/fashion-mnist/moco/all/t0.2/seed2"
    dynamics_only = ("dynamics_queries", "dynamics_negatives")  # rule dynamics's: no reanalysis when they change
    settings = json.dumps({k: v for k, v in cfg["analysis"].items() if k not in dynamics_only}, sort_keys=True)
    assert (
        f"python -m negatives analyze --data results/data/fashion-mnist/data.pt --checkpoint {run}/checkpoint.pt"
        f" --similarity {sim} --settings '{settings}' --jobs-per-gpu 1 --out {run}/analysis/pairs.parquet >"
    ) in out
    assert f"{run}/analysis/pairs.parquet {sim} --out results/figures/tables_a4_a6 >" in out
    assert "python -m negatives figure fig4 --config-json '{" in out


def test_dry_run_of_a_runs_dynamics(workdir):
    """Every trained run's analysis/dynamics.csv is a target (its run, the
    similarity matrix and the dynamics job), read by fig_dynamics alone; the
    snapshots reach the trainer as a flag, outside the run's --settings."""
    cfg = default_config()
    targets = grid.figure_dynamics(cfg, "fig2")
    assert len(targets) == len(grid.runs_for(cfg, "fig2")) and all(
        t.endswith("/analysis/dynamics.csv") for t in targets
    )
    res = snakemake(workdir, "-n", "-p", targets[0], config={"pretrain": {"dynamics_epochs": [1, 4]}})
    out = res.stdout + res.stderr
    assert res.returncode == 0, out
    assert job_counts(out) == Counter(prepare=1, pretrain=1, similarity=1, dynamics=1)
    run = targets[0].removesuffix("/analysis/dynamics.csv")
    sim = "results/data/fashion-mnist/wordnet_similarity.tsv"
    settings = json.dumps(
        {k: v for k, v in cfg["analysis"].items() if k not in ("queries", "negatives")}, sort_keys=True
    )
    assert (
        f"python -m negatives dynamics --data results/data/fashion-mnist/data.pt --checkpoint {run}/checkpoint.pt"
        f" --similarity {sim} --settings '{settings}' --jobs-per-gpu 1 --out {run}/analysis/dynamics.csv >"
    ) in out
    (line,) = [line for line in out.splitlines() if "python -m negatives pretrain " in line]
    assert "--dynamics-epochs '[1,4]'" in line and "dynamics_epochs" not in line.split("--settings", 1)[1].split("'")[1]
    # fig_dynamics draws them, beside its runs' logs; no other figure reads them
    readers = {f for f in grid.FIGURES if any("dynamics.csv" in p for p in grid.figure_inputs(cfg, f))}
    assert readers == {"fig_dynamics"} and set(targets) <= set(grid.figure_inputs(cfg, "fig_dynamics"))


def test_dry_run_follows_the_config(workdir):
    """Two temperatures and two seeds: the plan grows with the grid."""
    res = snakemake(workdir, "-n", "fig2", config={"temperatures": [0.1, 0.2], "seeds": [0, 1]})
    assert res.returncode == 0, res.stdout + res.stderr
    cfg = default_config()
    cfg.update(temperatures=[0.1, 0.2], seeds=[0, 1])
    counts = job_counts(res.stdout + res.stderr)
    assert counts == expected_jobs(cfg, ["fig2"])
    assert counts["pretrain"] == 6 * 2 * 2
    res = snakemake(workdir, "-n", "fig6", config={"temperatures": [0.1, 0.2], "seeds": [0, 1]})
    assert res.returncode == 0, res.stdout + res.stderr
    counts = job_counts(res.stdout + res.stderr)
    assert counts == expected_jobs(cfg, ["fig6"]) and counts["analyze"] == 2 * 2


# every bad value is tested on check_config directly in test_config.py;
# these go through `snakemake -n` end to end
BAD_THROUGH_SNAKEMAKE = [
    ({"figures": {"fig2": {"segments": ["keep[95_100)", "hardest-5"]}}}, "figures.fig2.segments[1]: unknown policy"),
    ({"pretrain": {"queue_size": 100}}, "pretrain.queue_size"),
    ({"datasets": {"fashion-mnist": {"root": "/nonexistent/fmnist"}}}, "datasets.fashion-mnist.root"),
    ({"analysis": {"queries": 9000}}, "analysis.queries"),
    ({"figures": {"fig6": {"hard_cut": 100}}}, "figures.fig6.hard_cut: 100 is greater than or equal to the maximum"),
    ({"pretrain": {"dynamics_epochs": [9]}}, "pretrain.dynamics_epochs: 9 is no epoch of the run"),
    ({"pretrain": {"dynamics_epochs": [0]}}, "pretrain.dynamics_epochs"),
]


@pytest.mark.parametrize("bad,needle", BAD_THROUGH_SNAKEMAKE, ids=[n for _, n in BAD_THROUGH_SNAKEMAKE])
def test_bad_config_fails_before_any_job(workdir, bad, needle):
    res = snakemake(workdir, "-n", config=bad)
    out = res.stdout + res.stderr
    assert res.returncode != 0, out
    assert needle in out, out
    assert "Job stats" not in out and "Building DAG" not in out, out


def test_lint_is_clean(workdir):
    res = snakemake(workdir, "--lint")
    out = res.stdout + res.stderr
    assert res.returncode == 0, out
    assert "Lints for" not in out, out
    assert "Congratulations, your workflow is in a good condition" in out, out


def test_speed_only_settings_stay_out_of_the_jobs_params(workdir):
    """``evaluate.threads`` and ``jobs_per_gpu`` (speed only) must not change
    the --settings of finished jobs (Snakemake would redo them); they reach
    the job as flags.  ``pretrain``'s threads, processes, nodes and compile
    change a run's last bits: they are in its --settings, not flags (which
    Snakemake's --cores could lower), and out of random-init's, whose
    encoder they do not change."""
    lines = {}
    for value in (False, True):
        res = snakemake(
            workdir,
            "-n",
            "-p",
            "--cores",
            "4",
            "fig2",
            config={
                "pretrain": {"compile": value, "threads": 1 + value, "processes": 1 + value},
                "evaluate": {"threads": 1 + value},
                "jobs_per_gpu": 1 if value else 3,
            },
        )
        out = res.stdout + res.stderr
        assert res.returncode == 0, out
        lines[value] = {
            rule: [line for line in out.splitlines() if f"python -m negatives {rule} " in line]
            for rule in ("pretrain", "init", "evaluate")
        }
        assert all(lines[value].values()), out[-3000:]
        assert all(f"--jobs-per-gpu {1 if value else 3} --out" in line for line in lines[value]["pretrain"])
        assert all(f"--threads {1 + value} --jobs-per-gpu" in line for line in lines[value]["evaluate"])
        assert not any("--threads" in line or "--compile" in line for line in lines[value]["pretrain"])
    settings = {
        rule: [[re.search(r"--settings '(\{.*?\})'", line)[1] for line in lines[v][rule]] for v in (False, True)]
        for rule in ("pretrain", "init", "evaluate")
    }
    assert settings["init"][0] == settings["init"][1] and settings["evaluate"][0] == settings["evaluate"][1]
    assert all('"threads"' not in s for s in settings["evaluate"][0] + settings["init"][0])
    for value in (False, True):
        assert all(
            f'"compile": {str(value).lower()}' in s
            and f'"threads": {1 + value}' in s
            and f'"processes": {1 + value}' in s
            and '"nodes": 1' in s
            for s in settings["pretrain"][value]
        )


def test_config_file_traps_are_named_or_read_right(workdir):
    """A key written twice and a YAML error are refused with the file and
    line; ``lr: 1e-3`` (a string to YAML 1.1) is read as the number."""
    base = (workdir / "config.yaml").read_text()
    (workdir / "config.yaml").write_text(base + "\npretrain:\n  epochs: 9\n")
    res = snakemake(workdir, "-n", "fig2")
    out = res.stdout + res.stderr
    assert res.returncode != 0 and re.search(
        r"config\.yaml:\d+:1: key 'pretrain' appears twice in one mapping "
        r"\(first on line \d+\)",
        out,
    ), out[-2000:]
    (workdir / "config.yaml").write_text(base.replace("  lr: 0.06 ", "  lr: [0.06 ", 1))
    res = snakemake(workdir, "-n", "fig2")
    out = res.stdout + res.stderr
    assert res.returncode != 0 and re.search(r"config\.yaml:\d+:\d+: ", out) and "invalid config" in out, out[-2000:]
    (workdir / "config.yaml").write_text(base)
    res = snakemake(workdir, "-n", "-p", "fig2", config={"pretrain": {"lr": "1e-3"}})
    assert res.returncode == 0, (res.stdout + res.stderr)[-2000:]
    assert '"lr": 0.001' in res.stdout + res.stderr
