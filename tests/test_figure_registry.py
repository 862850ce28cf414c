"""Each figure is declared once, as a record of negatives.figure_registry: its
runs, its drawing function, its caption and its place in the report.  A
figure added as one record (with its caption file and its config section) is
planned, and built, by the workflow."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import ROOT, fake_fashion_mnist
from test_end_to_end import tiny_config
from test_figures_analysis import fig4_runs, write_pairs

from negatives import figure_registry as registry
from negatives import grid
from negatives.config import ConfigError, check_config
from negatives.figure_registry import REGISTRY, Figure, build, check_records, record, register


def default_config() -> dict:
    return yaml.safe_load((ROOT / "config.yaml").read_text())


# ---------------------------------------------------------------- the records


def test_every_record_has_its_caption_and_its_schema_section():
    check_records(ROOT)
    schema = yaml.safe_load((ROOT / registry.SCHEMA_FILE).read_text())
    # a figure of another figure's runs reads that one's section
    own = [name for name, fig in REGISTRY.items() if fig.runs_of is None]
    assert list(schema["properties"]["figures"]["properties"]) == own
    assert [n for n in REGISTRY if n not in own] == [
        "fig_dynamics",
        *(f"{f}_curves" for f in ("fig3", "table1", "simclr", "fig_methods")),
    ]
    assert sorted(p.stem for p in (ROOT / registry.CAPTIONS).glob("*.rst")) == sorted(REGISTRY)
    assert grid.FIGURES == tuple(REGISTRY) and set(grid.ANALYSES) == {"fig4", "fig5", "fig6", "tables_a4_a6"}


def _workflow_files(tmp_path: Path) -> Path:
    """The files :func:`check_records` reads, copied under ``tmp_path``."""
    for rel in (registry.SCHEMA_FILE, registry.CAPTIONS):
        src, dst = ROOT / rel, tmp_path / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if src.is_dir() else shutil.copy)(src, dst)
    return tmp_path


def test_a_record_without_its_caption_or_schema_section_is_named(tmp_path):
    root = _workflow_files(tmp_path)
    (root / "workflow" / "report" / "fig5.rst").unlink()
    with pytest.raises(ValueError, match=r"^figure fig5: its report caption workflow/report/fig5.rst is missing$"):
        check_records(root)
    shutil.copy(ROOT / "workflow" / "report" / "fig5.rst", root / "workflow" / "report" / "fig5.rst")
    schema_path = root / registry.SCHEMA_FILE
    schema = yaml.safe_load(schema_path.read_text())
    sections = schema["properties"]["figures"]["properties"]
    sections["fig99"] = sections.pop("simclr")
    schema_path.write_text(yaml.safe_dump(schema, sort_keys=False))
    with pytest.raises(
        ValueError,
        match=r"^figure simclr: workflow/schemas/config.schema.yaml has no figures.simclr "
        r"section \(its settings, temperatures at least, with default: \{\}\)$",
    ):
        check_records(root)
    sections["simclr"] = sections.pop("fig99")
    sections["fig99"] = {"type": "object", "default": {}}
    schema_path.write_text(yaml.safe_dump(schema, sort_keys=False))
    with pytest.raises(ValueError, match=r"figures.fig99 names no figure \(negatives.figure_registry\)$"):
        check_records(root)


def _draw(paths, out, section):
    return pd.DataFrame()


@pytest.mark.parametrize(
    "fig, message",
    [
        (Figure("fig2", "again", _draw), "declared twice"),
        (Figure("2fig", "x", _draw), "a name is a letter"),
        (Figure("fig-9", "x", _draw), "a name is a letter"),
        (Figure("fig9", "x", _draw, source="pairs"), "source 'pairs'; allowed: probes, analyses"),
        (Figure("fig9", "x", _draw, source="analyses", policy_keys=("removed",)), "has no policy_keys"),
        (Figure("fig9", "x", _draw, similarity=True), "only a figure drawn from analyses reads the similarity file"),
        (Figure("fig9", "x", "fig2"), "draw must be a function"),
    ],
)
def test_register_refuses_a_record_that_cannot_be_built(fig, message):
    before = dict(REGISTRY)
    with pytest.raises(ValueError, match=f"^figure record '{fig.name}': .*{re.escape(message)}"):
        register(fig)
    assert REGISTRY == before


def test_a_records_policies_are_the_baseline_then_its_policy_keys_in_order():
    section = {"policies": ["debiased[0.1]", "hard[1_0.1]"], "band": "drop[99_100)", "temperatures": [0.1]}
    assert record("fig_methods").policies(section) == ["all", "drop[99_100)", "debiased[0.1]", "hard[1_0.1]"]
    assert record("fig4").policies({"hard_cut": 90}) == ["all"]
    cfg = default_config()
    cfg["figures"]["fig_methods"] = section
    assert grid.figure_policies(cfg, "fig_methods") == ["all", "drop[99_100)", "debiased[0.1]", "hard[1_0.1]"]
    assert grid.figure_method(cfg, "simclr") == "simclr" and grid.figure_method(cfg, "fig_methods") == "moco"
    assert grid.figure_temperatures(cfg, "fig_methods") == [0.1]
    with pytest.raises(ValueError, match="unknown figure 'fig99'; allowed: fig2, fig3, table1"):
        record("fig99")


def test_only_a_records_policy_keys_are_read_as_policies(tmp_path, monkeypatch):
    """The config check parses the keys a record names as policies, and no other."""
    cfg = default_config()
    cfg["datasets"]["fashion-mnist"]["root"] = str(fake_fashion_mnist(tmp_path / "fmnist"))
    monkeypatch.setitem(REGISTRY, "fig3", Figure("fig3", "Figure 3", _draw, policy_keys=()))
    cfg["figures"]["fig3"]["removed"] = ["not a policy"]
    check_config(cfg)
    monkeypatch.setitem(REGISTRY, "fig3", Figure("fig3", "Figure 3", _draw, policy_keys=("removed",)))
    with pytest.raises(ConfigError, match=r"^figures.fig3.removed\[0\]: "):
        check_config(cfg)
    cfg["figures"]["fig3"]["removed"] = ["drop[99_100)"]
    check_config(cfg)
    cfg["figures"]["fig99"] = {}
    with pytest.raises(ConfigError, match=r"^figures.fig99: unknown figure; allowed: fig2, "):
        check_config(cfg)


def test_build_draws_with_the_records_function(tmp_path, monkeypatch):
    calls = []

    def draw(paths, out, section):
        calls.append((paths, out, section))
        return pd.DataFrame({"x": [1]})

    monkeypatch.setitem(REGISTRY, "fig3", Figure("fig3", "Figure 3", draw, policy_keys=("removed",)))
    table = build("fig3", ["a.json"], "out/fig3", {"figures": {"fig3": {"removed": ["drop[99_100)"]}}})
    assert table.equals(pd.DataFrame({"x": [1]}))
    assert calls == [(["a.json"], "out/fig3", {"removed": ["drop[99_100)"]})]


@pytest.mark.filterwarnings("ignore:Precision loss occurred:RuntimeWarning")  # equal values by construction
def test_an_analysis_figure_with_its_own_temperatures_draws(tmp_path):
    """``figures.fig4.temperatures`` chooses the runs; it is no argument of the drawing."""
    paths = [write_pairs(tmp_path / f"seed{s}.parquet", cols, t, s) for (t, s), cols in fig4_runs().items()]
    table = build("fig4", paths, str(tmp_path / "a"), {"figures": {"fig4": {"hard_cut": 95, "temperatures": [0.2]}}})
    assert len(table) == 2 * 2 and (table["n"] == 3).all()
    pd.testing.assert_frame_equal(
        table, build("fig4", paths, str(tmp_path / "b"), {"figures": {"fig4": {"hard_cut": 95}}})
    )


def _probe_files(folder: Path, cfg: dict, name: str) -> list[str]:
    """probe.json files of every run figure ``name`` plots (2 seeds), and of the untrained encoders."""
    paths = []
    runs = [(p, 0.2) for p in grid.figure_policies(cfg, name)] + [("random-init", None)]
    for i, (policy, t) in enumerate(runs):
        for seed in (0, 1):
            probe = {
                "dataset": "fashion-mnist",
                "method": grid.figure_method(cfg, name),
                "policy": policy,
                "temperature": t,
                "seed": seed,
                "uses_labels": False,
                "epochs": 0 if t is None else 4,
                "train_images_per_s": 1000.0 + i,
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
            probe.update({f"{e}_{k}": 50.0 + i + seed for e in ("linear", "fewshot", "knn") for k in ("top1", "top5")})
            paths.append(folder / f"{i}-{seed}.json")
            paths[-1].write_text(json.dumps(probe))
    return [str(p) for p in paths]


@pytest.mark.parametrize("name", [n for n in REGISTRY if record(n).source == "probes"])
@pytest.mark.filterwarnings("ignore:Precision loss occurred:RuntimeWarning")  # equal values by construction
def test_each_probe_figure_draws_its_section_as_its_science_function_does(tmp_path, name):
    """The record's function hands the right keys of its section to the right arguments."""
    from negatives.analysis import comparison_figures, probe_figures
    from negatives.analysis.plotting import load_probes

    cfg = default_config()
    fig = cfg["figures"][name]
    paths = _probe_files(tmp_path, cfg, name)
    table = build(name, paths, str(tmp_path / "built"), cfg)
    df = load_probes(paths, extra_metrics=("train_images_per_s",) if name == "fig_methods" else ())
    direct = {
        "fig2": lambda out: probe_figures.fig2(df, out, fig["segments"], fig["easiest"]),
        "fig3": lambda out: comparison_figures.fig3(df, out, fig["removed"]),
        "table1": lambda out: comparison_figures.table1(df, out, fig["removed"]),
        "simclr": lambda out: comparison_figures.simclr(df, out, fig["policies"]),
        "fig_methods": lambda out: comparison_figures.fig_methods(df, out, fig["policies"], fig["band"]),
    }[name]
    expected = direct(str(tmp_path / "direct"))
    pd.testing.assert_frame_equal(table, expected)
    assert (tmp_path / "built.csv").read_bytes() == (tmp_path / "direct.csv").read_bytes()
    assert set(table["policy"]) >= set(grid.figure_policies(cfg, name))


# ------------------------------------------------------------- a figure added as one record

NEW = "baseline_knn"

#: appended to the copy's figure_registry.py: its drawing function and its record
NEW_RECORD = """

def _baseline_knn(paths, out, fig):
    import matplotlib.pyplot as plt

    from .analysis.plotting import load_probes, summarize, write_figure

    table = summarize(load_probes(paths), ["knn_top1"])
    figure, ax = plt.subplots()
    ax.bar(table["policy"].astype(str), table["mean"])
    return write_figure(figure, table, out)


register(Figure("baseline_knn", "Baseline kNN", _baseline_knn))
"""

CAPTION = 'kNN top-1 of the baseline runs on {{ snakemake.config["dataset"] }}: one bar a policy.\n'


def add_a_figure(tmp_path: Path) -> Path:
    """A copy of the workflow with one more figure: its record (drawing from
    the baseline runs of the existing figures), its caption and its config
    section."""
    copy = tmp_path / "workflow-copy"
    copy.mkdir()
    for name in ("Snakefile", "config.yaml"):
        shutil.copy(ROOT / name, copy / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("workflow", "src", "envs", "profiles"):
        shutil.copytree(ROOT / name, copy / name, symlinks=True, ignore=ignore)
    module = copy / "src" / "negatives" / "figure_registry.py"
    module.write_text(module.read_text() + NEW_RECORD)
    (copy / registry.CAPTIONS / f"{NEW}.rst").write_text(CAPTION)
    schema_path = copy / registry.SCHEMA_FILE
    schema = yaml.safe_load(schema_path.read_text())
    schema["properties"]["figures"]["properties"][NEW] = {
        "type": "object",
        "additionalProperties": False,
        "default": {},
        "properties": {"temperatures": {"$ref": "#/$defs/figure_temperatures"}},
    }
    schema_path.write_text(yaml.safe_dump(schema, sort_keys=False))
    return copy


def run_snakemake(copy: Path, workdir: Path, *args: str, config: dict | None = None) -> subprocess.CompletedProcess:
    configfiles = []
    if config is not None:
        (workdir / "override.yaml").write_text(yaml.safe_dump(config))
        configfiles = ["--configfile", str(workdir / "override.yaml")]
    cmd = [sys.executable, "-m", "snakemake", "-s", str(copy / "Snakefile"), "-d", str(workdir), *configfiles, *args]
    # the jobs call `python`: the interpreter running the tests
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env)


def planned_job(out: str, rule: str) -> dict:
    """The one job of ``rule`` in a dry run's output: its input, output and shell command."""
    blocks = [b for b in re.split(r"\n(?=\[[^\]]+\]\n)", out) if re.search(rf"^(?:local)?rule {rule}:$", b, re.M)]
    assert len(blocks) == 1, out[-3000:]
    fields = dict(re.findall(r"^    (input|output): (.*)$", blocks[0], re.M))
    return {
        "input": fields["input"].split(", "),
        "output": fields["output"].split(", "),
        "shell": re.search(r"^Shell command: (.*)$", blocks[0], re.M)[1],
    }


def test_a_figure_added_as_one_record_is_planned(tmp_path):
    copy = add_a_figure(tmp_path)
    workdir = tmp_path / "work"
    workdir.mkdir()
    shutil.copy(ROOT / "config.yaml", workdir / "config.yaml")
    cfg = default_config()
    override = {"datasets": {"fashion-mnist": {"root": str(fake_fashion_mnist(tmp_path / "fmnist"))}}}
    res = run_snakemake(copy, workdir, "-n", "-p", NEW, config=override)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-3000:]
    job = planned_job(out, NEW)
    # the baseline runs of every seed (those fig2 and fig3 plot too), then the untrained encoders
    probes = [f"results/fashion-mnist/moco/all/t0.2/seed{s}/probe.json" for s in cfg["seeds"]]
    probes += [f"results/fashion-mnist/moco/random-init/seed{s}/probe.json" for s in cfg["seeds"]]
    assert job["input"] == probes and set(probes) < set(grid.figure_probes(cfg, "fig3"))
    assert job["output"] == [f"results/figures/{NEW}.{e}" for e in ("pdf", "png", "csv")]
    assert job["shell"].startswith(f"python -m negatives figure {NEW} --config-json '{{")
    assert job["shell"].endswith(
        f" --probes {' '.join(probes)} --out results/figures/{NEW} > logs/figures/{NEW}.log 2>&1"
        f" && echo 'Baseline kNN: results/figures/{NEW}.png' >&2"  # the terminal's line for a finished figure
    )
    counts = dict(re.findall(r"^(\w+)\s+(\d+)$", out.split("Job stats:", 1)[1].split("total", 1)[0], re.M))
    assert counts == {"prepare": "1", "pretrain": "3", "random_init": "3", "evaluate": "6", NEW: "1"}

    # the default target builds it with every other figure; its config section is the user's
    res = run_snakemake(copy, workdir, "-n", "-p", config={**override, "figures": {NEW: {"temperatures": [0.1]}}})
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-3000:]
    assert re.search(rf"^{NEW}\s+1$", out, re.M) and re.search(r"^all\s+1$", out, re.M)
    assert "results/fashion-mnist/moco/all/t0.1/seed0/probe.json" in planned_job(out, NEW)["input"]

    # a record without its caption is named before any job
    (copy / registry.CAPTIONS / f"{NEW}.rst").unlink()
    res = run_snakemake(copy, workdir, "-n", NEW, config=override)
    out = res.stdout + res.stderr
    assert res.returncode != 0 and "Job stats" not in out, out[-3000:]
    assert f"invalid figure records: figure {NEW}: its report caption workflow/report/{NEW}.rst is missing" in out


@pytest.mark.slow
def test_a_figure_added_as_one_record_is_built_and_reported(tmp_path):
    """On a tiny dataset: one seed, one epoch; the report holds its caption under its category."""
    copy = add_a_figure(tmp_path)
    workdir = tmp_path / "work"
    workdir.mkdir()
    cfg = tiny_config(tmp_path)
    cfg["seeds"] = [0]
    (workdir / "config.yaml").write_text(yaml.safe_dump(cfg))
    res = run_snakemake(copy, workdir, "--cores", "2", NEW)
    assert res.returncode == 0, (res.stdout + res.stderr)[-3000:]
    table = pd.read_csv(workdir / "results" / "figures" / f"{NEW}.csv")
    probes = [
        json.loads((workdir / "results" / "fashion-mnist" / "moco" / p / "probe.json").read_text())
        for p in ("all/t0.2/seed0", "random-init/seed0")
    ]
    assert table["policy"].tolist() == ["all", "random-init"] and table["n"].tolist() == [1, 1]
    assert table["mean"].tolist() == [p["knn_top1"] for p in probes]
    for ext in ("pdf", "png"):
        assert (workdir / "results" / "figures" / f"{NEW}.{ext}").stat().st_size > 1000

    res = run_snakemake(copy, workdir, "--report", "report.html", NEW)
    assert res.returncode == 0, (res.stdout + res.stderr)[-3000:]
    report = (workdir / "report.html").read_text()
    assert "Baseline kNN" in report and "kNN top-1 of the baseline runs on fashion-mnist" in report
