"""Every ready config in configs/ is an overlay on config.yaml that gives the
effective config its full file gave, repeats no default, passes the schema and
check_config, and a dry run plans the expected number of jobs.

tests/workflow/effective_configs/NAME.json is the effective config (config.yaml + the
file, the schema's defaults filled in, as the workflow saw it run from the
checkout) of each config at fbecef0, when configs/ held full files; written
once from ``git show fbecef0:...`` so that the check needs no git history.
Rewrite one only when a default changes on purpose.

When a figure (or a rule) is added, update EXPECTED_JOBS: the total of the
dry run's job table and its number of pretraining runs, per config."""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import fake_imagenet, fake_tiny_imagenet
from snakemake.utils import validate

from negatives.config import ConfigError, check_config
from negatives.config_files import base_config, check_config_file, merge_config, numbers_as_numbers, read_config

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = ROOT / "workflow" / "schemas" / "config.schema.yaml"
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))
EFFECTIVE = ROOT / "tests" / "workflow" / "effective_configs"

#: config -> (jobs in the dry run of the default target, of which pretraining runs)
#: cifar10/100, tiny-imagenet: 22 policies (fig2 6, fig3 +3, table1 +4, simclr 3 with SimCLR, fig_methods +6)
#: x 2 temperatures x 3 seeds = 132 runs, + 3 random-init, 135 evaluations, 6 analyses, 1 similarity,
#: prepare, 9 figures, all = 288.  stl10: table1 empty (its unlabeled split has no labels): 18 policies, 108 runs, 240.
#: imagenet-paper: fig2 (1 + 20 segments + 2 easiest) at 0.2 only; fig3 (all + 3) and table1 (+4) at 0.07, 0.1,
#: 0.2; simclr (3) and fig_methods (+6) at 0.2; x 3 seeds = 165 runs, + 3 random-init, 168 evaluations,
#: 9 analyses, 1 similarity, prepare, 9 figures, all = 357.
EXPECTED_JOBS = {
    "cifar10.yaml": (341, 138),
    "cifar100.yaml": (341, 138),
    "fashion-mnist-gpu.yaml": (182, 69),
    "stl10.yaml": (293, 114),
    "tiny-imagenet.yaml": (341, 138),
    "imagenet-paper.yaml": (437, 168),
}

#: configs whose data cannot be downloaded: dry runs point them at a tiny fake root
FAKE_ROOTS = {"tiny-imagenet.yaml": fake_tiny_imagenet, "imagenet-paper.yaml": fake_imagenet}


def load(path: Path) -> dict:
    """A config file layered on config.yaml, as ``snakemake --configfile`` run in the checkout gets it."""
    return read_config(path, base=ROOT / "config.yaml")


def effective(cfg: dict) -> dict:
    """``cfg`` as the workflow uses it: numbers written 1e-3 as numbers, the schema's defaults filled in."""
    cfg = numbers_as_numbers(copy.deepcopy(cfg))
    validate(cfg, str(SCHEMA))
    return cfg


def test_every_config_is_listed():
    assert [p.name for p in CONFIGS] == sorted(EXPECTED_JOBS)
    assert sorted(p.name for p in EFFECTIVE.glob("*.json")) == sorted(
        ["config.json"] + [p.stem + ".json" for p in CONFIGS]
    )


@pytest.mark.parametrize("path", [ROOT / "config.yaml", *CONFIGS], ids=lambda p: p.name)
def test_overlay_gives_the_effective_config_of_its_full_file(path, tmp_path, monkeypatch):
    """config.yaml + the overlay, after the schema's defaults, is exactly
    what the full file gave, in the checkout and in a working directory
    without a config.yaml (the workflow's own is the base there)."""
    want = json.loads((EFFECTIVE / (path.stem + ".json")).read_text())
    assert effective(load(path)) == want
    monkeypatch.chdir(tmp_path)
    assert base_config() == ROOT / "config.yaml"
    assert effective(read_config(path)) == want


def test_the_working_directorys_config_yaml_is_the_base(tmp_path, monkeypatch):
    """As Snakemake's configfile: a config.yaml in the working directory, not the workflow's, is under an overlay."""
    own = yaml.safe_load((ROOT / "config.yaml").read_text())
    own["pretrain"]["lr"] = 0.1
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(own))
    monkeypatch.chdir(tmp_path)
    assert base_config(ROOT) == Path("config.yaml")
    cfg = read_config(ROOT / "configs" / "cifar10.yaml")
    assert (cfg["pretrain"]["lr"], cfg["pretrain"]["epochs"]) == (0.1, 200)


def _leaves(d: dict, prefix=()):
    for k, v in d.items():
        yield from (_leaves(v, (*prefix, k)) if isinstance(v, dict) and v else [(*prefix, k)])


def _repeats(base: dict, overlay: dict) -> list[str]:
    """The keys of ``overlay`` whose removal leaves the effective config of ``base`` + ``overlay`` as it is."""
    from snakemake.exceptions import WorkflowError

    full = effective(merge_config(base, overlay))
    out = []
    for key in _leaves(overlay):
        try:
            same = effective(merge_config(base, _without(overlay, key))) == full
        except WorkflowError:  # a required key (a dataset's root)
            same = False
        if same:
            out.append(".".join(key))
    return out


def _without(d: dict, key: tuple) -> dict:
    out = copy.deepcopy(d)
    node = out
    for k in key[:-1]:
        node = node[k]
    del node[key[-1]]
    return out


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_overlay_is_short_and_repeats_no_default(path):
    """At most 40 lines, and every key it names changes the effective config:
    one whose value is config.yaml's (or, where config.yaml names none, the
    schema's default) is a repeat, left out."""
    assert len(path.read_text().splitlines()) <= 40
    assert _repeats(read_config(base=ROOT / "config.yaml"), check_config_file(path)) == []


def test_a_repeated_default_is_found(tmp_path):
    """The check above finds a key set to config.yaml's value, and one set to the schema's default."""
    overlay = tmp_path / "repeat.yaml"
    overlay.write_text("pretrain: {epochs: 4, lr: 0.1}\ndatasets: {cifar10: {root: x, storage: auto}}\n")
    assert _repeats(read_config(base=ROOT / "config.yaml"), check_config_file(overlay)) == [
        "pretrain.epochs",
        "datasets.cifar10.storage",
    ]


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_layering_is_snakemakes(path):
    """The library layers a file on config.yaml as Snakemake merges --configfile onto configfile:."""
    from snakemake.utils import update_config

    base = yaml.safe_load((ROOT / "config.yaml").read_text())
    update_config(base, yaml.safe_load(path.read_text()))
    assert load(path) == base


@pytest.mark.parametrize(
    "base, overlay, want",
    [
        ({"a": {"b": 1, "c": [1, 2]}}, {"a": {"c": [3]}}, {"a": {"b": 1, "c": [3]}}),  # lists replace
        ({"a": {"b": {"c": 1, "d": 2}}}, {"a": {"b": {"d": 3}}}, {"a": {"b": {"c": 1, "d": 3}}}),
        ({"a": 1}, {"a": {"b": 2}}, {"a": {"b": 2}}),
        ({"a": 1}, {"a": {}}, {"a": 1}),
        ({"a": {"b": 1}}, {"a": None}, {"a": None}),
        ({}, {"a": {}}, {"a": {}}),
    ],
    ids=["a list", "nested", "a mapping over a number", "an empty mapping", "null", "a new empty mapping"],
)
def test_merge_matches_snakemake(base, overlay, want):
    from snakemake.utils import update_config

    theirs = copy.deepcopy(base)
    update_config(theirs, copy.deepcopy(overlay))
    before = copy.deepcopy(base)
    assert merge_config(base, overlay) == theirs == want
    assert base == before


def test_a_typo_in_an_overlay_names_the_key_and_the_file(tmp_path):
    overlay = tmp_path / "mine.yaml"
    overlay.write_text("pretrain:\n  epoch: 10\n")
    with pytest.raises(ConfigError) as err:
        read_config(overlay, base=ROOT / "config.yaml")
    assert str(err.value) == (
        f"{overlay}: pretrain: Additional properties are not allowed ('epoch' was unexpected); "
        "allowed: " + ", ".join(sorted(yaml.safe_load(SCHEMA.read_text())["properties"]["pretrain"]["properties"]))
    )
    overlay.write_text("datasets:\n  cifar10:\n    root: x\n    downlaod: true\n")
    with pytest.raises(
        ConfigError,
        match=rf"^{overlay}: datasets\.cifar10: Additional properties are not allowed "
        r"\('downlaod' was unexpected\); allowed: .*download",
    ):
        read_config(overlay, base=ROOT / "config.yaml")
    overlay.write_text("- pretrain\n")
    with pytest.raises(ConfigError, match=rf"^{overlay}: holds a list, not a mapping of config keys"):
        read_config(overlay)
    overlay.write_text("# pretrain: {epochs: 10}\n")
    with pytest.raises(ConfigError, match=rf"^{overlay}: holds nothing, not a mapping of config keys"):
        read_config(overlay)


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
    check_config(effective(cfg))


def dry_run(workdir: Path, configfiles, env=None) -> subprocess.CompletedProcess:
    """``snakemake -n`` in ``workdir`` holding config.yaml (as in the checkout), the overlays on top."""
    shutil.copy(ROOT / "config.yaml", workdir / "config.yaml")
    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        "-s",
        str(ROOT / "Snakefile"),
        "-d",
        str(workdir),
        "-n",
        "--configfile",
        *map(str, configfiles),
    ]
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


@pytest.mark.parametrize(
    "layout, want",
    [
        ({}, {"gpu=8", "mpi=srun", "nodes=1", "tasks_per_node=8", "cpus_per_task=4"}),
        (
            {"processes": 4, "nodes": 2},
            {"gpu=0", "gres=gpu:4", "mpi=srun", "nodes=2", "tasks_per_node=4", "cpus_per_task=8"},
        ),
    ],
    ids=["8 GPUs", "2 nodes of 4"],
)
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
    shutil.copy(ROOT / "config.yaml", tmp_path / "config.yaml")
    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        "-s",
        str(ROOT / "Snakefile"),
        "-d",
        str(tmp_path),
        "-n",
        "fig2",
        "--configfile",
        str(ROOT / "configs" / "fashion-mnist-gpu.yaml"),
    ]
    environ = {k: v for k, v in os.environ.items() if k != "NEGATIVES_SKIP_DATA_CHECK"}
    res = subprocess.run(
        cmd, capture_output=True, text=True, timeout=300, env={**environ, "PYTHONPATH": str(ROOT / "src")}
    )
    out = res.stdout + res.stderr
    assert res.returncode == 0, out
    assert job_table(out) == {"prepare": 1, "pretrain": 18, "random_init": 3, "evaluate": 21, "fig2": 1, "total": 44}
    assert {"gpu=1", "jobs_per_gpu=6"} <= _pretrain_resources(out)
