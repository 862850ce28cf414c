"""Checks for running the workflow on a SLURM cluster, made before any job
is submitted (called from ``workflow/rules/common.smk``): that SLURM answers
from this machine, and that the executor can learn when a job ended."""

from __future__ import annotations

import re
import shutil
import subprocess

__all__ = ["accounting_storage", "slurm_config", "check_status_command"]

#: what to do when SLURM cannot be used from this machine
_ELSEWHERE = (
    "run the workflow from a machine of the cluster (its login node), or without --profile slurm "
    "(a workstation: --profile profiles/local)"
)


def accounting_storage(scontrol_config: str) -> str | None:
    """The ``AccountingStorageType`` of ``scontrol show config`` output (None if absent)."""
    m = re.search(r"^AccountingStorageType\s*=\s*(\S+)", scontrol_config, re.M)
    return m.group(1) if m else None


def slurm_config(run=subprocess.run, which=shutil.which) -> str:
    """``scontrol show config`` of the cluster this machine submits to.

    Raises ``RuntimeError`` saying what is missing -- SLURM's commands, or a
    controller that answers -- and what to do, before the executor would
    retry its account lookups and fail every job."""
    missing = [c for c in ("sbatch", "scontrol") if which(c) is None]
    if missing:
        raise RuntimeError(
            f"the slurm executor needs SLURM's commands, and this machine lacks {', '.join(missing)}; " + _ELSEWHERE
        )
    try:
        proc = run(["scontrol", "show", "config"], capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        raise RuntimeError(
            "SLURM's controller did not answer `scontrol show config` within 60 s; " + _ELSEWHERE
        ) from None
    if proc.returncode != 0:
        said = (proc.stderr or proc.stdout or "").strip().splitlines()
        raise RuntimeError(
            f"SLURM cannot be reached from here (`scontrol show config`: "
            f"{said[-1] if said else f'exit status {proc.returncode}'}); " + _ELSEWHERE
        )
    return proc.stdout


def check_status_command(status_command: str | None, scontrol_config: str) -> None:
    """Refuse ``slurm-status-command: sacct`` on a cluster without accounting.

    There sacct never lists a job and the executor plugin waits forever; the
    fix is ``slurm-status-command: squeue`` (profiles/slurm/config.yaml).
    ``scontrol_config``: the output of ``scontrol show config`` (:func:`slurm_config`).
    """
    if status_command != "sacct":
        return
    if accounting_storage(scontrol_config) == "accounting_storage/none":
        raise RuntimeError(
            "slurm-status-command is sacct, but this cluster keeps no accounting "
            "(AccountingStorageType=accounting_storage/none): sacct would never list a job and the "
            "workflow would wait forever. Set 'slurm-status-command: squeue' in profiles/slurm/config.yaml "
            "(or on the command line: --slurm-status-command squeue)."
        )
