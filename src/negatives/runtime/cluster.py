"""Checks for running the workflow on a SLURM cluster, made before any job
is submitted (called from ``workflow/rules/common.smk``)."""

from __future__ import annotations

import re
import shutil
import subprocess

__all__ = ["accounting_storage", "check_status_command"]


def accounting_storage(scontrol_config: str) -> str | None:
    """The ``AccountingStorageType`` of ``scontrol show config`` output (None if absent)."""
    m = re.search(r"^AccountingStorageType\s*=\s*(\S+)", scontrol_config, re.M)
    return m.group(1) if m else None


def check_status_command(status_command: str | None, scontrol_config: str | None = None) -> None:
    """Refuse ``slurm-status-command: sacct`` on a cluster without accounting.

    There sacct never lists a job and the executor plugin waits forever; the
    fix is ``slurm-status-command: squeue`` (profiles/slurm/config.yaml).
    ``scontrol_config``: the output of ``scontrol show config`` (read here
    when None and scontrol exists; nothing is checked without it).
    """
    if status_command != "sacct":
        return
    if scontrol_config is None:
        if shutil.which("scontrol") is None:
            return
        proc = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, timeout=60)
        if proc.returncode != 0:
            return
        scontrol_config = proc.stdout
    if accounting_storage(scontrol_config) == "accounting_storage/none":
        raise RuntimeError(
            "slurm-status-command is sacct, but this cluster keeps no accounting "
            "(AccountingStorageType=accounting_storage/none): sacct would never list a job and the "
            "workflow would wait forever. Set 'slurm-status-command: squeue' in profiles/slurm/config.yaml "
            "(or on the command line: --slurm-status-command squeue)."
        )
