"""The workflow on a real SLURM cluster: `.ci/slurm_cluster.sh` starts a
one-node cluster with accounting (munged, MariaDB, slurmdbd, slurmctld,
slurmd) and fake GPUs; `snakemake --profile slurm`, run from the repository's
root with the site settings overridden, must send every job through sbatch
(sacct lists each one, COMPLETED) and produce the probes of a baseline
run, a band run and the random-init floor; every daemon the
script started is stopped afterwards.

Needs root and apt-get (or the Debian packages slurm-wlm slurmdbd munge
mariadb-server); deselected by default (`-m slurm` selects it; .ci/run does)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from conftest import ROOT
from test_end_to_end import tiny_config

pytestmark = pytest.mark.slurm
SCRIPT = ROOT / ".ci" / "slurm_cluster.sh"
RULES = {"prepare": 1, "pretrain": 2, "random_init": 1, "evaluate": 3}
# The baseline and a band: canonical policy names hold no comma (keep[95_100)),
# since Snakemake 9 splits the --target-jobs wildcards it hands a remote job on
# commas (snakemake/target_jobs.py); this run would fail if one did
RUN = "results/fashion-mnist/moco/{}/probe.json"
TARGETS = [RUN.format("all/t0.2/seed0"), RUN.format("keep[95_100)/t0.2/seed0"), RUN.format("random-init/seed0")]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """SLURM_CONF of a running cluster; stops every daemon it started."""
    check = subprocess.run([str(SCRIPT), "check"], capture_output=True, text=True)
    if check.returncode != 0:
        pytest.skip(f"no SLURM cluster on this machine: {check.stdout.strip()}")
    directory = tmp_path_factory.mktemp("slurm")
    pids = []
    try:
        start = subprocess.run([str(SCRIPT), "start", str(directory)], capture_output=True, text=True, timeout=900)
        pids = (
            [int(line.split()[1]) for line in (directory / "pids").read_text().splitlines()]
            if (directory / "pids").exists()
            else []
        )
        assert start.returncode == 0, start.stderr[-3000:]
        yield directory / "slurm.conf"
    finally:
        subprocess.run([str(SCRIPT), "stop", str(directory)], timeout=300)
        left = [pid for pid in pids if _alive(pid)]
        assert not left, f"daemons still running after stop: {left}"


def _snakemake(cluster, directory, targets, pretrain_resources):
    """``snakemake --profile slurm`` on the test cluster; the time it started, for sacct."""
    light = "mem_mb=1000 slurm_partition=ci"
    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        "--profile",
        "slurm",
        "--directory",
        str(directory),
        *targets,
        # the test site: its partitions and account, and small jobs on a small node
        "--default-resources",
        "slurm_partition=ci",
        "slurm_account=negatives",
        "mem_mb=1000",
        "--set-resources",
        *[f"{rule}:{kv}" for rule in ("prepare", "random_init", "evaluate") for kv in light.split()],
        *[f"pretrain:{kv}" for kv in pretrain_resources],
        "--jobs",
        "4",
        "--slurm-init-seconds-before-status-checks",
        "2",
        "--seconds-between-status-checks",
        "2",
    ]
    env = _env(cluster)
    started = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(time.time() - 5))
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900, env=env)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return started


def _env(cluster):
    return {
        **os.environ,
        "SLURM_CONF": str(cluster),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}/usr/sbin{os.pathsep}{os.environ.get('PATH', '')}",
    }


def test_workflow_runs_every_job_through_sbatch(cluster, tmp_path):
    cfg = tiny_config(tmp_path)
    cfg["seeds"] = [0]
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    # pretraining asks for one of the node's fake GPUs (it trains on the CPU: the config says device auto)
    started = _snakemake(cluster, tmp_path, TARGETS, ["mem_mb=1000", "slurm_partition=gpu", "gpu=1", "gpu_model=fake"])
    env = _env(cluster)
    for target in TARGETS:
        probe = json.loads((tmp_path / target).read_text())
        assert probe["seed"] == 0 and 0 <= probe["knn_top1"] <= 100
    assert not list((tmp_path / "results").rglob("last*.pt"))

    # every job went through sbatch, and accounting saw it finish
    sacct = subprocess.run(
        ["sacct", "-X", "-n", "-P", "--starttime", started, "-o", "JobID,Comment,State,AllocTRES,Partition"],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    ).stdout.splitlines()
    jobs = [line.split("|") for line in sacct if line]
    rules = {}
    for _, comment, state, tres, partition in jobs:
        rule = next(r for r in RULES if comment.startswith(f"rule_{r}_") or comment == f"rule_{r}")
        assert state == "COMPLETED", (comment, state)
        rules[rule] = rules.get(rule, 0) + 1
        assert partition == ("gpu" if rule == "pretrain" else "ci")
        assert ("gres/gpu" in tres) == (rule == "pretrain"), (rule, tres)
    assert rules == RULES


def test_a_run_of_two_processes_is_one_job_of_two_srun_tasks(cluster, tmp_path):
    """pretrain.processes 2: one sbatch job of two tasks on the node, its
    command handing over to srun, whose step of two tasks trains the run."""
    cfg = tiny_config(tmp_path)
    cfg["seeds"] = [0]
    cfg["pretrain"].update(processes=2, threads=2, device="cpu")
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    target = "results/fashion-mnist/moco/all/t0.2/seed0/checkpoint.pt"
    started = _snakemake(cluster, tmp_path, [target], ["mem_mb=3000"])
    run = torch.load(tmp_path / target, weights_only=False)
    assert run["meta"]["settings"]["processes"] == 2 and len(run["log"]) == 1
    sacct = subprocess.run(
        ["sacct", "-n", "-P", "--starttime", started, "-o", "JobID,Comment,NTasks,State"],
        capture_output=True,
        text=True,
        env=_env(cluster),
        check=True,
    ).stdout.splitlines()
    rows = [line.split("|") for line in sacct if line]
    job = next(jid for jid, comment, _, _ in rows if comment.startswith("rule_pretrain"))
    steps = {jid: (tasks, state) for jid, _, tasks, state in rows if jid.startswith(f"{job}.")}
    trained = [s for jid, s in steps.items() if jid.split(".")[1].isdigit()]  # srun's steps, not batch or extern
    assert trained == [("2", "COMPLETED")], rows
    assert all(state == "COMPLETED" for _, state in steps.values()), rows
