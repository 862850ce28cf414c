"""What a user sees early in a long run: Figure 2 and every job it needs are
planned first (a higher ``priority``; every other job waits for them, none
joins the plan), and each figure job
prints one line with its file on the terminal."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import fake_fashion_mnist

from negatives import grid

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def workdir(tmp_path):
    """The default config, its dataset root pointed at a tiny fake Fashion-MNIST."""
    shutil.copy(ROOT / "config.yaml", tmp_path / "config.yaml")
    root = fake_fashion_mnist(tmp_path / "fmnist")
    (tmp_path / "override.yaml").write_text(yaml.safe_dump({"datasets": {"fashion-mnist": {"root": str(root)}}}))
    return tmp_path


def _dry_run(workdir: Path, *targets: str, config: dict | None = None) -> str:
    """``snakemake -n -p TARGETS`` (targets before the options: --configfile takes every word after it)."""
    cmd = [sys.executable, "-m", "snakemake", *targets, "-n", "-p", "-s", str(ROOT / "Snakefile"), "-d", str(workdir)]
    cmd += ["--configfile", str(workdir / "override.yaml")]
    if config:
        (workdir / "extra.yaml").write_text(yaml.safe_dump(config))
        cmd.append(str(workdir / "extra.yaml"))
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert res.returncode == 0, res.stdout + res.stderr
    return res.stdout + res.stderr


def _jobs(out: str) -> list[str]:
    """The dry run's job blocks, each from its ``rule NAME:`` line."""
    return [block for block in re.split(r"^\[[^\]\n]*\]\n", out, flags=re.M) if block.startswith("rule ")]


def test_figure_2s_runs_come_before_the_others(workdir):
    blocks = _jobs(_dry_run(workdir))
    first = {b.split("\n", 1)[0] for b in blocks if "priority: 1" in b}
    assert first == {"rule pretrain:", "rule random_init:", "rule evaluate:", "rule fig2:"}
    assert all(re.search(r"^\s+priority: [01]$", b, re.M) for b in blocks if "priority:" in b)
    pretrain = [b for b in blocks if b.startswith("rule pretrain:")]
    top = {re.search(r"output: (\S+)/checkpoint\.pt", b)[1] for b in pretrain if "priority: 1" in b}
    cfg = yaml.safe_load((ROOT / "config.yaml").read_text())
    assert top == {run.dir() for run in grid.runs_for(cfg, "fig2")}
    assert len(pretrain) > 2 * len(top)  # the rest wait: Figure 2's runs are about a quarter
    evaluate = [b for b in blocks if b.startswith("rule evaluate:") and "priority: 1" in b]
    assert {re.search(r"output: (\S+)", b)[1] for b in evaluate} == set(grid.figure_probes(cfg, "fig2"))


def test_asking_for_another_figure_plans_no_figure_2(workdir):
    out = _dry_run(workdir, "fig3")
    assert "rule fig2:" not in out  # its runs shared with Figure 3 (the baseline's) still come first


def test_a_figure_job_says_which_file_it_wrote(workdir, tmp_path):
    out = _dry_run(workdir, "fig2")
    (command,) = [line.split(": ", 1)[1] for line in out.splitlines() if "negatives figure fig2" in line]
    # the rule's own command, with a python that draws nothing: what the job prints besides its log
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    (bin_ / "python").write_text("#!/bin/sh\necho drawing\n")
    (bin_ / "python").chmod(0o755)
    (workdir / "logs" / "figures").mkdir(parents=True)
    env = {**os.environ, "PATH": f"{bin_}:{os.environ['PATH']}"}
    res = subprocess.run(["bash", "-c", command], cwd=workdir, capture_output=True, text=True, env=env)
    assert res.returncode == 0 and res.stdout == ""
    assert res.stderr == "Figure 2: results/figures/fig2.png\n"
    assert (workdir / "logs" / "figures" / "fig2.log").read_text() == "drawing\n"  # the rest goes to the log


def test_a_training_job_gets_log_every_as_configured(workdir):
    out = _dry_run(workdir, "fig2", config={"pretrain": {"log_every": 0.5}})
    commands = [line for line in out.splitlines() if "negatives pretrain" in line]
    assert commands and all(" --log-every 0.5 " in line for line in commands)  # not rounded to 0 (off)
