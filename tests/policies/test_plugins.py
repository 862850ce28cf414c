"""Policies of other packages, found by name through the entry-point group
``negatives.policies``: the policy docs/your-policy.md writes, built from the
page's own code blocks and installed with pip, parsed, validated, trained
through the command line and planned by the workflow; and the refusals (an
unknown name, a package that fails to import, a name taken from a built-in
family, one name in two packages)."""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from conftest import ROOT, fake_fashion_mnist

from negatives.config import ConfigError, check_config
from negatives.grid import Run, figure_policies
from negatives.policies import Candidates, NegativePolicy, PolicyError, registry
from negatives.policies.registry import parse_policy, plugins

DOC = ROOT / "docs" / "your-policy.md"
SETTINGS = dict(
    backbone="small-cnn", width=4, dim=8, epochs=2, batch_size=16, queue_size=32, bn_splits=2, knn_monitor=0, threads=1
)


def doc_blocks() -> dict[str, str]:
    """The page's code blocks by their ``file=`` or second word (```python file=x.py, ```text refusal)."""
    text = DOC.read_text()
    blocks = re.findall(r"^```\w+ (?:file=)?(\S+)\n(.*?)^```$", text, re.M | re.S)
    names = [name for name, _ in blocks]
    assert len(names) == len(set(names)), names
    return dict(blocks)


#: a second package: a name of a built-in family, a module that fails to
#: import, an object that is no policy class, a constructor that fails, a
#: name no policy string can spell, and the tutorial's name taken again
BAD_PROJECT = {
    "pyproject.toml": """\
[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "bad-policies"
version = "0.1.0"

[project.entry-points."negatives.policies"]
keep = "bad_policies:Fine"
broken-import = "bad_broken:Fine"
not-a-class = "bad_policies:not_a_class"
crashes = "bad_policies:Crashes"
Upper_Case = "bad_policies:Fine"
hard-plus-random = "bad_policies:Fine"

[tool.setuptools]
py-modules = ["bad_policies", "bad_broken"]
""",
    "bad_policies.py": """\
from negatives.policies import NegativePolicy


class Fine(NegativePolicy):
    def __init__(self, *numbers):
        self.numbers = numbers


class Crashes(NegativePolicy):
    def __init__(self, x):
        self.x = 1 / x


not_a_class = 42
""",
    "bad_broken.py": "import a_module_this_environment_lacks  # noqa: F401\n",
}


def pip_install(project: dict[str, str], folder: Path) -> Path:
    """Write ``project`` (file name -> text) and pip-install it into ``folder/site``
    without the network: the build backend (setuptools) comes from the test
    environment, no dependency is fetched."""
    pytest.importorskip("setuptools")
    src = folder / "project"
    src.mkdir(parents=True)
    for name, text in project.items():
        (src / name).write_text(text)
    site = folder / "site"
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--no-cache-dir",
            "--disable-pip-version-check",
            "-q",
            "--target",
            str(site),
            str(src),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    return site


@pytest.fixture(scope="module")
def tutorial_site(tmp_path_factory) -> Path:
    """The tutorial's package, its two files read out of docs/your-policy.md, installed."""
    blocks = doc_blocks()
    project = {name: blocks[name] for name in ("hard_plus_random.py", "pyproject.toml")}
    return pip_install(project, tmp_path_factory.mktemp("tutorial"))


@pytest.fixture(scope="module")
def bad_site(tmp_path_factory) -> Path:
    return pip_install(BAD_PROJECT, tmp_path_factory.mktemp("bad"))


@pytest.fixture
def on_path(monkeypatch):
    """Put installed folders on ``sys.path`` for this test, the entry points read afresh."""

    def put(*sites: Path) -> None:
        for site in reversed(sites):
            monkeypatch.syspath_prepend(str(site))
        plugins.cache_clear()

    plugins.cache_clear()
    yield put
    plugins.cache_clear()


def env_with(*sites: Path) -> dict:
    """The environment of a subprocess that sees ``sites`` and this checkout's library."""
    path = [*map(str, sites), str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in path if p)}


@pytest.fixture
def cfg(tmp_path) -> dict:
    c = yaml.safe_load((ROOT / "config.yaml").read_text())
    c["datasets"]["fashion-mnist"]["root"] = str(fake_fashion_mnist(tmp_path / "fmnist"))
    return c


# ------------------------------------------------------------- the tutorial


def test_the_tutorial_policy_is_short_and_makes_its_selection_in_one_place():
    code = doc_blocks()["hard_plus_random.py"]
    assert len(code.splitlines()) <= 30
    # the constructor of a policy's answer appears once: renaming it is a one-line change
    assert len(re.findall(r"\bSelection\s*[.(]", code)) == 1
    assert set(doc_blocks()) == {"hard_plus_random.py", "pyproject.toml", "my-policy.yaml", "refusal"}


def test_the_installed_policy_is_found_by_name_and_keeps_the_hardest_plus_random(tutorial_site, on_path):
    on_path(tutorial_site)
    recipe = parse_policy(" hard-plus-random[ 20.0 ] ")
    policy = recipe.policy
    assert isinstance(policy, NegativePolicy) and type(policy).__name__ == "HardPlusRandom"
    assert type(policy).__module__ == "hard_plus_random" and policy.n == 20.0
    assert policy.name == "hard-plus-random[20]" == parse_policy("hard-plus-random[20]").name
    assert str(parse_policy("hard-plus-random[10]")) == "hard-plus-random[10]"  # as the page says
    assert (recipe.replace, recipe.uses_labels, recipe.needs_queue) == (False, False, False)
    # 10 candidates, n = 20%: the 2 hardest and 2 of the other 8, drawn from torch's generator
    sim = torch.tensor(
        [[0.1, 0.9, 0.2, 0.8, 0.3, 0.0, 0.4, 0.5, 0.6, 0.7], [0.9, 0.1, 0.8, 0.2, 0.7, 0.3, 0.6, 0.4, 0.5, 0.0]]
    )
    masks = []
    for seed in (0, 0, 1, 2, 3):
        torch.manual_seed(seed)
        keep = policy(sim, Candidates(), 0.0).keep
        assert keep.dtype == torch.bool and keep.shape == (2, 10)
        assert keep.sum(dim=1).tolist() == [4, 4]
        assert keep[0, [1, 3]].all() and keep[1, [0, 2]].all()  # the hardest two, always
        masks.append(keep)
    assert torch.equal(masks[0], masks[1])  # one seed, one draw
    assert any(not torch.equal(masks[0], m) for m in masks[2:])  # the rest is drawn, not fixed
    policy.validate(10)
    with pytest.raises(PolicyError, match=r"^policy 'hard-plus-random\[20\]': 20% of 4 negatives is none; raise n$"):
        policy.validate(4)


def test_numbers_and_the_canonical_name(tutorial_site, on_path):
    on_path(tutorial_site)
    assert parse_policy("hard-plus-random[12.50]").name == "hard-plus-random[12.5]"
    assert parse_policy("hard-plus-random[0.001]").name == "hard-plus-random[0.001]"
    with pytest.raises(PolicyError) as e:
        parse_policy("hard-plus-random[60]")  # the constructor's own refusal, with the package
    assert str(e.value) == (
        "policy 'hard-plus-random[60]' (the plugin family 'hard-plus-random' of package "
        "'hard-plus-random'): n must lie in (0, 50], got 60"
    )
    with pytest.raises(PolicyError) as e:
        parse_policy("hard-plus-random[5_5]")  # two numbers for a constructor of one
    assert str(e.value).startswith(
        "policy 'hard-plus-random[5_5]' (the plugin family 'hard-plus-random' of package "
        "'hard-plus-random'): HardPlusRandom(5, 5) failed (TypeError: "
    )
    for text in ("hard-plus-random[5", "hard-plus-random[]", "hard-plus-random[five]", "hard-plus-random(5)"):
        with pytest.raises(
            PolicyError,
            match=r"malformed( plugin policy \(.* is not a number\))?; allowed: "
            r"'hard-plus-random' or 'hard-plus-random\[x,y",
        ):
            parse_policy(text)
    with pytest.raises(
        PolicyError, match=r"'@replace' applies to a removal policy \(drop...\), got 'hard-plus-random\[5\]'"
    ):
        parse_policy("hard-plus-random[5]@replace")  # replace mode: the family is no removal


def test_entry_points_are_read_once_per_process(tutorial_site, on_path, monkeypatch):
    on_path(tutorial_site)
    calls = []
    real = registry.entry_points
    monkeypatch.setattr(registry, "entry_points", lambda **kw: calls.append(kw) or real(**kw))
    for text in ("hard-plus-random[10]", "keep[95_100)", "hard-plus-random[20]", "all"):
        parse_policy(text)
    assert calls == [{"group": "negatives.policies"}]


def test_the_config_check_validates_it_as_ours(tutorial_site, on_path, cfg):
    """The schema and the deep check accept a registered name, and the run
    gets the plugin's validate before any job: the page's refusal, word for word."""
    from snakemake.utils import validate

    on_path(tutorial_site)
    overlay = yaml.safe_load(doc_blocks()["my-policy.yaml"])
    cfg["figures"]["fig_methods"].update(overlay["figures"]["fig_methods"])
    validate(copy.deepcopy(cfg), str(ROOT / "workflow" / "schemas" / "config.schema.yaml"))
    check_config(cfg)
    assert figure_policies(cfg, "fig_methods") == [
        "all",
        "drop[99.9_100)",
        "hard-plus-random[10]",
        "ring[100->10_10_linear_50]",
    ]
    cfg["figures"]["fig_methods"]["policies"] = ["hard-plus-random[0.01]"]
    with pytest.raises(ConfigError) as e:
        check_config(cfg)
    assert f"invalid config: {e.value}" == doc_blocks()["refusal"].strip()


def test_an_unregistered_name_is_refused_with_the_allowed_forms(tutorial_site, on_path, cfg):
    on_path()  # nothing installed
    cfg["figures"]["fig_methods"]["policies"] = ["hard-plus-random[10]"]
    with pytest.raises(ConfigError) as e:
        check_config(cfg)
    msg = str(e.value)
    assert msg.startswith("figures.fig_methods.policies[0]: unknown policy 'hard-plus-random[10]'; allowed: 'all', ")
    assert msg.endswith("; no plugin families are installed (entry-point group 'negatives.policies')")
    assert "retain-hard[r]" in msg and "\n" not in msg
    on_path(tutorial_site)  # installed: a misspelling lists it
    with pytest.raises(PolicyError) as e:
        parse_policy("hard-plus-randm[10]")
    assert str(e.value).endswith(
        "; and from installed plugins: 'hard-plus-random' or 'hard-plus-random[x,y,...]' (package 'hard-plus-random')"
    )


def test_the_refusals_name_the_policy_and_the_package(bad_site, on_path):
    on_path(bad_site)
    where = "(the plugin family {0!r} of package 'bad-policies')"
    with pytest.raises(PolicyError) as e:
        parse_policy("broken-import[1]")
    assert str(e.value) == (
        f"policy 'broken-import[1]' {where.format('broken-import')}: its entry point "
        "'bad_broken:Fine' failed to load (ModuleNotFoundError: No module named "
        "'a_module_this_environment_lacks')"
    )
    with pytest.raises(PolicyError) as e:
        parse_policy("not-a-class")
    assert str(e.value) == (
        f"policy 'not-a-class' {where.format('not-a-class')}: its entry point "
        "'bad_policies:not_a_class' is 42, not a subclass of negatives.policies.NegativePolicy"
    )
    with pytest.raises(PolicyError) as e:
        parse_policy("crashes[0]")
    assert str(e.value) == (
        f"policy 'crashes[0]' {where.format('crashes')}: Crashes(0) failed (ZeroDivisionError: float division by zero)"
    )
    # a built-in family's name: refused where that family is read, every other policy as before
    for text in ("keep[95_100)", "keep[95_100)@replace"):
        with pytest.raises(PolicyError) as e:
            parse_policy(text)
        assert str(e.value) == (
            f"policy {text!r}: the plugin family 'keep' of package 'bad-policies' takes the "
            "name of a built-in family; rename its entry point in group 'negatives.policies'"
        )
    assert parse_policy("drop[99_100)").name == "drop[99_100)" and parse_policy("all").name == "all"
    # a name no policy string can spell is said to be ignored, naming its package
    with pytest.raises(
        PolicyError,
        match=r"; the entry point 'Upper_Case' of package 'bad-policies' is ignored: "
        r"a family's name is lowercase letters, digits and '-'$",
    ):
        parse_policy("upper-case")
    assert parse_policy("hard-plus-random[3]").policy.numbers == (3.0,)  # alone, its hard-plus-random is a policy


def test_one_name_in_two_packages_is_refused(tutorial_site, bad_site, on_path):
    on_path(tutorial_site, bad_site)
    with pytest.raises(PolicyError) as e:
        parse_policy("hard-plus-random[10]")
    assert str(e.value) == (
        "policy 'hard-plus-random[10]' (the plugin family 'hard-plus-random' of package "
        "'hard-plus-random' and 'bad-policies'): one family declared by several packages; "
        "uninstall all but one"
    )


def test_the_figures_label_it_by_its_name(tutorial_site, on_path):
    """The SimCLR figure says what a band or a removal keeps and names every other policy (a plugin's too)."""
    from negatives.analysis.comparison_figures import _simclr_label

    on_path(tutorial_site)
    assert [
        _simclr_label(p) for p in ("hard-plus-random[10.0]", "mochi[8_4_2]", "keep[95,100)", "drop-same-class")
    ] == ["hard-plus-random[10]", "mochi[8_4_2]", "keep 95-100%", "remove same-class [labels]"]


# --------------------------------------------------- the command line and the workflow


def test_the_command_line_trains_it_into_its_own_folder(tutorial_site, data_path, tmp_path):
    run = Run("fashion-mnist", "moco", "hard-plus-random[10]", 0.2, 0).dir(str(tmp_path / "results"))
    assert run.endswith("/results/fashion-mnist/moco/hard-plus-random[10]/t0.2/seed0")
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "negatives",
            "pretrain",
            "--data",
            str(data_path),
            "--policy",
            "hard-plus-random[10]",
            "--temperature",
            "0.2",
            "--seed",
            "0",
            "--settings",
            json.dumps(SETTINGS),
            "--out",
            run,
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env=env_with(tutorial_site),
    )
    assert out.returncode == 0, out.stderr
    log = pd.read_csv(Path(run) / "train_log.csv")
    # 32 queued negatives, n = 10%: the 3 hardest and 3 drawn, every step of both epochs
    assert log["epoch"].tolist() == [1, 2] and log["negatives_kept"].tolist() == [6.0, 6.0]
    meta = torch.load(Path(run) / "checkpoint.pt", weights_only=False)["meta"]
    assert meta["policy"] == "hard-plus-random[10]"


def test_the_command_line_refuses_a_plugin_that_fails_to_import(bad_site, data_path, tmp_path):
    run = tmp_path / "run"
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "negatives",
            "pretrain",
            "--data",
            str(data_path),
            "--policy",
            "broken-import[1]",
            "--temperature",
            "0.2",
            "--seed",
            "0",
            "--settings",
            json.dumps(SETTINGS),
            "--out",
            str(run),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env=env_with(bad_site),
    )
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "policy 'broken-import[1]'" in lines[0] and "package 'bad-policies'" in lines[0]
    assert "No module named 'a_module_this_environment_lacks'" in lines[0]
    assert not run.exists()


def _snakemake(workdir: Path, env: dict, *args: str) -> tuple[int, str]:
    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        "-s",
        str(ROOT / "Snakefile"),
        "-d",
        str(workdir),
        "--configfile",
        str(workdir / "override.yaml"),
        str(workdir / "my-policy.yaml"),
        *args,
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    return out.returncode, out.stdout + out.stderr


def test_the_workflow_plans_it_from_the_pages_overlay(tutorial_site, tmp_path):
    shutil.copy(ROOT / "config.yaml", tmp_path / "config.yaml")
    root = fake_fashion_mnist(tmp_path / "fmnist")
    (tmp_path / "override.yaml").write_text(yaml.safe_dump({"datasets": {"fashion-mnist": {"root": str(root)}}}))
    (tmp_path / "my-policy.yaml").write_text(doc_blocks()["my-policy.yaml"])
    rc, out = _snakemake(tmp_path, env_with(tutorial_site), "-n", "-p", "fig_methods")
    assert rc == 0, out
    for seed in (0, 1, 2):
        assert f"--policy 'hard-plus-random[10]' --temperature 0.2 --seed {seed} --settings '{{" in out
        assert f"--out 'results/fashion-mnist/moco/hard-plus-random[10]/t0.2/seed{seed}'" in out
    # all, the band, the plugin and ring at 3 seeds
    assert re.search(r"^pretrain\s+12\s*$", out, re.M), out
    # the same overlay without the package: refused before any job, with the allowed forms
    rc, out = _snakemake(tmp_path, env_with(), "-n", "fig_methods")
    assert rc != 0 and "Building DAG" not in out and "Job stats" not in out, out
    assert (
        "invalid config: figures.fig_methods.policies[0]: unknown policy 'hard-plus-random[10]'; allowed: 'all', "
        in out
    ), out
