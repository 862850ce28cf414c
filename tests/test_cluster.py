"""The SLURM accounting check made before any job is submitted."""

import pytest

from negatives.runtime.cluster import accounting_storage, check_status_command

ON = "ClusterName = ci\nAccountingStorageType   = accounting_storage/slurmdbd\nMinJobAge = 300\n"
OFF = "ClusterName = ci\nAccountingStorageType   = accounting_storage/none\n"


def test_accounting_storage_is_read_from_scontrol():
    assert accounting_storage(ON) == "accounting_storage/slurmdbd"
    assert accounting_storage(OFF) == "accounting_storage/none"
    assert accounting_storage("ClusterName = x\n") is None


def test_sacct_without_accounting_is_refused_with_the_fix():
    with pytest.raises(RuntimeError, match="slurm-status-command: squeue"):
        check_status_command("sacct", OFF)
    check_status_command("sacct", ON)          # accounting on: fine
    check_status_command("squeue", OFF)        # squeue needs no accounting
