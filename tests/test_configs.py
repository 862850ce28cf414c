"""Every ready config in configs/ is complete, passes the schema and
check_config, and a dry run plans the expected number of jobs.

When a figure (or a rule) is added, update EXPECTED_JOBS: the total of the
dry run's job table and its number of pretraining runs, per config."""

from __future__ import annotations

import copy
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from snakemake.utils import validate

from negatives.config import check_config

from conftest import fake_imagenet, fake_tiny_imagenet

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = ROOT / "workflow" / "schemas" / "config.schema.yaml"
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))

#: config -> (jobs in the dry run of the default target, of which pretraining runs)
#: cifar10/100, tiny-imagenet: 22 policies (fig2 6, fig3 +3, table1 +4, simclr 3 with SimCLR, fig_methods +6)
#: x 2 temperatures x 3 seeds = 132 runs, + 3 random-init, 135 evaluations, 6 analyses, 1 similarity,
#: prepare, 9 figures, all = 288.  stl10: table1 empty (its unlabeled split has no labels): 18 policies, 108 runs, 240.
#: imagenet-paper: fig2 (1 + 20 segments + 2 easiest) at 0.2 only; fig3 (all + 3) and table1 (+4) at 0.07, 0.1,
#: 0.2; simclr (3) and fig_methods (+6) at 0.2; x 3 seeds = 165 runs, + 3 random-init, 168 evaluations,
#: 9 analyses, 1 similarity, prepare, 9 figures, all = 357.
EXPECTED_JOBS = {
    "cifar10.yaml": (300, 138),
    "cifar100.yaml": (300, 138),
    "fashion-mnist-gpu.yaml": (159, 69),
    "stl10.yaml": (252, 114),
    "tiny-imagenet.yaml": (300, 138),
    "imagenet-paper.yaml": (363, 168),
}

#: configs whose data cannot be downloaded: dry runs point them at a tiny fake root
FAKE_ROOTS = {"tiny-imagenet.yaml": fake_tiny_imagenet, "imagenet-paper.yaml": fake_imagenet}


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def test_every_config_is_listed():
    assert [p.name for p in CONFIGS] == sorted(EXPECTED_JOBS)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_is_complete_and_valid(path):
    """Every key of config.yaml is set (the schema adds no default) and valid."""
    cfg = load(path)
    filled = copy.deepcopy(cfg)
    validate(filled, str(SCHEMA))
    assert filled == cfg

    def keys(d, prefix=""):  # every key but a figure's optional own temperatures
        return ({prefix + k for k in d if not (prefix.startswith("figures.") and k == "temperatures")}
                | {x for k, v in d.items() if isinstance(v, dict) and k != "datasets" for x in keys(v, f"{prefix}{k}.")})

    assert keys(cfg) == keys(load(ROOT / "config.yaml"))
    assert list(cfg["datasets"]) == [cfg["dataset"]]


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_passes_check_config(path, tmp_path, wordnet_reader):
    cfg = load(path)
    entry = cfg["datasets"][cfg["dataset"]]
    if path.name in FAKE_ROOTS:
        entry["root"] = str(FAKE_ROOTS[path.name](tmp_path / "data"))
    elif path.name == "fashion-mnist-gpu.yaml":  # Debian's package, as config.yaml (a GPU machine downloads nothing)
        assert entry["root"] == load(ROOT / "config.yaml")["datasets"]["fashion-mnist"]["root"]
    else:
        assert entry["download"] is True and not Path(entry["root"]).is_absolute()
    check_config(cfg)


def dry_run(workdir: Path, configfiles, env=None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "-d", str(workdir), "-n",
           "--configfile", *map(str, configfiles)]
    environ = {k: v for k, v in os.environ.items() if k != "NEGATIVES_SKIP_DATA_CHECK"}
    environ.update(PYTHONPATH=str(ROOT / "src"), **(env or {}))
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=environ)


def job_table(out: str) -> dict[str, int]:
    table = out.split("Job stats:", 1)[1].split("Reasons:", 1)[0]
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)\s*$", table, re.M)}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_dry_run_plans_the_expected_jobs(path, tmp_path):
    files = [path]
    if path.name in FAKE_ROOTS:
        cfg = load(path)
        root = FAKE_ROOTS[path.name](tmp_path / "data")
        override = tmp_path / "root.yaml"
        override.write_text(yaml.safe_dump({"datasets": {cfg["dataset"]: {"root": str(root)}}}))
        files.append(override)
    res = dry_run(tmp_path, files)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out
    counts = job_table(out)
    assert (counts["total"], counts["pretrain"]) == EXPECTED_JOBS[path.name], counts


def test_dry_run_without_the_data(tmp_path):
    """A missing data directory stops the run before any job, unless
    NEGATIVES_SKIP_DATA_CHECK=1 turns it into a warning (planning elsewhere)."""
    path = ROOT / "configs" / "imagenet-paper.yaml"
    res = dry_run(tmp_path, [path])
    out = res.stdout + res.stderr
    assert res.returncode != 0 and "datasets.imagenet.root: data directory data/imagenet" in out, out
    assert "Job stats" not in out
    res = dry_run(tmp_path, [path], env={"NEGATIVES_SKIP_DATA_CHECK": "1"})
    out = res.stdout + res.stderr
    assert res.returncode == 0, out
    assert "UserWarning: datasets.imagenet.root: data directory data/imagenet" in out
    assert job_table(out)["total"] == EXPECTED_JOBS["imagenet-paper.yaml"][0]


def _pretrain_resources(out: str) -> set[str]:
    """The resources of the planned pretraining jobs (each ``key=value``)."""
    found = set()
    for block in out.split("rule pretrain:")[1:]:
        line = next(x for x in block.splitlines() if x.strip().startswith("resources:"))
        found.update(kv.strip() for kv in line.split(":", 1)[1].split(","))
    return found


@pytest.mark.parametrize("layout, want", [
    ({}, {"gpu=8", "mpi=srun", "nodes=1", "tasks_per_node=8", "cpus_per_task=4"}),
    ({"processes": 4, "nodes": 2}, {"gpu=0", "gres=gpu:4", "mpi=srun", "nodes=2", "tasks_per_node=4",
                                    "cpus_per_task=8"}),
], ids=["8 GPUs", "2 nodes of 4"])
def test_the_paper_config_asks_for_the_gpus_of_one_run(tmp_path, layout, want):
    """configs/imagenet-paper.yaml trains each run on 8 GPUs (MoCo v2's
    setting); processes 4 x nodes 2 asks SLURM for 2 machines of 4."""
    root = fake_imagenet(tmp_path / "data")
    override = tmp_path / "override.yaml"
    override.write_text(yaml.safe_dump({"datasets": {"imagenet": {"root": str(root)}}, "pretrain": layout}))
    res = dry_run(tmp_path, [ROOT / "configs" / "imagenet-paper.yaml", override])
    out = res.stdout + res.stderr
    assert res.returncode == 0, out
    asked = _pretrain_resources(out)
    assert want <= asked, sorted(asked)


def test_the_gpu_config_plans_figure_2_on_one_gpu(tmp_path):
    """configs/fashion-mnist-gpu.yaml: Figure 2 is 18 runs (6 policies x 3
    seeds) of ResNet-18 on the full Fashion-MNIST, each evaluating job and
    pretraining job on one of the GPU's 6 slots."""
    cfg = load(ROOT / "configs" / "fashion-mnist-gpu.yaml")
    entry = cfg["datasets"]["fashion-mnist"]
    assert (entry["train_images"], entry["test_images"], entry["download"]) == (0, 0, False)
    assert cfg["pretrain"]["backbone"] == "resnet18" and cfg["pretrain"]["device"] == "cuda"
    cmd = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "-d", str(tmp_path), "-n", "fig2",
           "--configfile", str(ROOT / "configs" / "fashion-mnist-gpu.yaml")]
    environ = {k: v for k, v in os.environ.items() if k != "NEGATIVES_SKIP_DATA_CHECK"}
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**environ, "PYTHONPATH": str(ROOT / "src")})
    out = res.stdout + res.stderr
    assert res.returncode == 0, out
    assert job_table(out) == {"prepare": 1, "pretrain": 18, "random_init": 3, "evaluate": 21, "fig2": 1, "total": 44}
    assert {"gpu=1", "jobs_per_gpu=6"} <= _pretrain_resources(out)
