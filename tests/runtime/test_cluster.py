"""The SLURM checks made before any job is submitted."""

import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
import yaml
from conftest import ROOT, fake_fashion_mnist

from negatives.runtime.cluster import accounting_storage, check_status_command, slurm_config

ON = "ClusterName = ci\nAccountingStorageType   = accounting_storage/slurmdbd\nMinJobAge = 300\n"
OFF = "ClusterName = ci\nAccountingStorageType   = accounting_storage/none\n"


def test_accounting_storage_is_read_from_scontrol():
    assert accounting_storage(ON) == "accounting_storage/slurmdbd"
    assert accounting_storage(OFF) == "accounting_storage/none"
    assert accounting_storage("ClusterName = x\n") is None


def test_sacct_without_accounting_is_refused_with_the_fix():
    with pytest.raises(RuntimeError, match="slurm-status-command: squeue"):
        check_status_command("sacct", OFF)
    check_status_command("sacct", ON)  # accounting on: fine
    check_status_command("squeue", OFF)  # squeue needs no accounting


def test_slurm_that_cannot_be_reached_is_named_with_what_to_do():
    with pytest.raises(
        RuntimeError,
        match=r"needs SLURM's commands, and this machine lacks sbatch, scontrol; run the "
        r"workflow from a machine of the cluster .*--profile profiles/local",
    ):
        slurm_config(which=lambda name: None)
    down = SimpleNamespace(returncode=1, stdout="", stderr="scontrol: error: x\nscontrol: fatal: no configuration\n")
    with pytest.raises(
        RuntimeError,
        match=r"cannot be reached from here \(`scontrol show config`: scontrol: fatal: no "
        r"configuration\); run the workflow from",
    ):
        slurm_config(run=lambda *a, **k: down, which=lambda name: f"/usr/bin/{name}")
    up = SimpleNamespace(returncode=0, stdout=ON, stderr="")
    assert slurm_config(run=lambda *a, **k: up, which=lambda name: f"/usr/bin/{name}") == ON


def test_the_slurm_profile_off_the_cluster_stops_before_any_job(tmp_path):
    """``snakemake --profile slurm`` where SLURM does not answer: one message
    before any job is submitted (not the executor's account lookups retried
    for every job); a dry run still plans."""
    cfg = yaml.safe_load((ROOT / "config.yaml").read_text())
    cfg["datasets"]["fashion-mnist"]["root"] = str(fake_fashion_mnist(tmp_path / "fmnist"))
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    env = {
        **os.environ,
        "SLURM_CONF": str(tmp_path / "no-slurm.conf"),
        "PATH": f"{tmp_path}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    for name in ("sbatch", "scontrol"):  # SLURM's commands, whose controller is nowhere
        (tmp_path / name).write_text('#!/bin/sh\necho "$0: error: cannot reach the controller" >&2\nexit 1\n')
        (tmp_path / name).chmod(0o755)
    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        "--snakefile",
        str(ROOT / "Snakefile"),
        "--directory",
        str(tmp_path),
        "--profile",
        str(ROOT / "profiles" / "slurm"),
        "--",
        "results/data/fashion-mnist/data.pt",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "SLURM cannot be reached from here" in out, out[-3000:]
    assert "cannot reach the controller" in out and "sacctmgr" not in out and "Submitted" not in out, out[-3000:]
    assert not (tmp_path / "results").exists() and not (tmp_path / "logs" / "slurm").exists()
    plan = subprocess.run(
        cmd[:-2] + ["-n", "--", "results/data/fashion-mnist/data.pt"],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert plan.returncode == 0, (plan.stdout + plan.stderr)[-3000:]
