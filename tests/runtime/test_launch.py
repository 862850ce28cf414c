"""How a run of several processes is started: by torchrun or srun (each
process finds its rank in the environment), by the command itself inside a
SLURM job (it becomes ``srun`` of the run's processes), and the SLURM job the
workflow asks for (the sbatch line snakemake-executor-plugin-slurm makes of
the pretraining job's resources).  A run started either way equals the run in
one process."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import textwrap
from types import SimpleNamespace

import pytest
import torch
import yaml
from conftest import ROOT, fake_fashion_mnist

from negatives.config import ConfigError
from negatives.runtime import distributed
from negatives.runtime.launch import check_executor, pretrain_resources, srun_command
from negatives.training.pretrain import pretrain

RUN = dict(
    backbone="small-cnn", width=4, dim=8, epochs=2, batch_size=16, queue_size=32, bn_splits=4, knn_monitor=0, threads=2
)
POLICY = "drop[90_100)"


# ----------------------------------------------------------- the environment


def test_torchrun_sets_the_rank_and_the_rendezvous():
    env = {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "MASTER_ADDR": "node7", "MASTER_PORT": "29411"}
    assert distributed.launched(env) == distributed.Launch(3, 4, 1, "node7", 29411, "torchrun")
    assert distributed.launched({**env, "WORLD_SIZE": "1", "RANK": "0"}) is None


def test_a_slurm_step_of_several_tasks_sets_the_rank_and_rank_0s_host():
    step = {
        "SLURM_JOB_ID": "123456",
        "SLURM_STEP_ID": "0",
        "SLURM_STEP_NUM_TASKS": "8",
        "SLURM_PROCID": "5",
        "SLURM_LOCALID": "1",
        "SLURM_STEP_NODELIST": "gpu[03-04,07],cpu1",
        "SLURM_NTASKS": "8",
    }
    assert distributed.launched(step) == distributed.Launch(5, 8, 1, "gpu03", 20000 + 123456 % 20000, "srun")
    assert distributed.launched({**step, "MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "4000"}).master_addr == "10.0.0.1"
    # the job's batch script holds SLURM_NTASKS too, but is no step of several tasks; nor is a one-task step
    assert distributed.launched({"SLURM_JOB_ID": "1", "SLURM_NTASKS": "8", "SLURM_PROCID": "0"}) is None
    assert distributed.launched({**step, "SLURM_STEP_NUM_TASKS": "1", "SLURM_PROCID": "0"}) is None
    assert distributed.launched({}) is None


@pytest.mark.parametrize(
    "nodelist, first",
    [("gpu[03-04,07],cpu1", "gpu03"), ("node1,node2", "node1"), ("n[1-2]", "n1"), ("host", "host"), ("a-b[9]", "a-b9")],
)
def test_rank_0_runs_on_the_first_host_of_the_node_list(nodelist, first):
    assert (
        distributed.launched(
            {"SLURM_STEP_NUM_TASKS": "2", "SLURM_PROCID": "0", "SLURM_STEP_NODELIST": nodelist}
        ).master_addr
        == first
    )


def test_a_launch_of_another_size_than_the_config_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("SLURM_STEP_NUM_TASKS", "2")
    monkeypatch.setenv("SLURM_PROCID", "0")
    with pytest.raises(
        ConfigError,
        match=r"pretrain\.processes 4 x pretrain\.nodes 1, but this run was started "
        r"as 2 processes \(srun\)",
    ):
        pretrain(tmp_path / "data.pt", "moco", POLICY, 0.2, 0, {**RUN, "processes": 4}, tmp_path / "run")


def test_runs_across_machines_need_a_launcher(tmp_path, monkeypatch):
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    with pytest.raises(
        ConfigError,
        match=r"pretrain\.nodes: 2 machines train this run, so its processes are "
        r"started on each of them by srun",
    ):
        pretrain(tmp_path / "data.pt", "moco", POLICY, 0.2, 0, {**RUN, "processes": 2, "nodes": 2}, tmp_path / "run")
    with pytest.raises(
        ValueError,
        match=r"pretrain\.nodes: 2 machines per run need a cluster: run the "
        r"workflow with --profile slurm",
    ):
        check_executor({"processes": 2, "nodes": 2}, "local")
    check_executor({"processes": 2, "nodes": 2}, "slurm")
    check_executor({"processes": 2, "nodes": 1}, "local")


# ------------------------------------------------- runs started from outside


@pytest.fixture(scope="module")
def alone(data_path, tmp_path_factory):
    out = tmp_path_factory.mktemp("alone")
    return torch.load(pretrain(data_path, "moco", POLICY, 0.2, 0, RUN, out, log=lambda m: None), weights_only=False)


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "RANK", "WORLD_SIZE", "MASTER_"))}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])
    return {**env, **extra}


def _command(data, out, settings) -> list[str]:
    return [
        sys.executable,
        "-m",
        "negatives",
        "pretrain",
        "--data",
        str(data),
        "--policy",
        POLICY,
        "--temperature",
        "0.2",
        "--seed",
        "0",
        "--settings",
        json.dumps(settings),
        "--out",
        str(out),
    ]


def _same_run(path, alone) -> None:
    run = torch.load(path, weights_only=False)
    for name, value in alone["model"].items():
        if value.is_floating_point():
            torch.testing.assert_close(run["model"][name], value, rtol=1e-5, atol=1e-5, msg=name)
        else:
            assert torch.equal(run["model"][name], value), name
    assert [r["negatives_kept"] for r in run["log"]] == [r["negatives_kept"] for r in alone["log"]]
    assert run["meta"]["settings"]["processes"] == 2


@pytest.mark.parametrize("launcher", ["torchrun", "srun"])
def test_processes_started_by_a_launcher_train_the_run_of_one(tmp_path, data_path, alone, launcher):
    """Two processes started as torchrun or an srun step start them (their
    environment), each running the command: the run of one process."""
    port = str(distributed.free_port())
    procs = []
    for r in range(2):
        env = (
            _env(RANK=str(r), WORLD_SIZE="2", LOCAL_RANK=str(r), MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
            if launcher == "torchrun"
            else _env(
                SLURM_JOB_ID="77",
                SLURM_STEP_ID="0",
                SLURM_STEP_NUM_TASKS="2",
                SLURM_PROCID=str(r),
                SLURM_LOCALID=str(r),
                SLURM_STEP_NODELIST="localhost",
                MASTER_PORT=port,
            )
        )
        procs.append(
            subprocess.Popen(
                _command(data_path, tmp_path / "run", {**RUN, "processes": 2}),
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    said = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], said
    assert "epoch   1" in said[0] and "epoch" not in said[1], said  # rank 0 alone logs
    _same_run(tmp_path / "run" / "checkpoint.pt", alone)


FAKE_SRUN = textwrap.dedent("""\
    #!{python}
    # srun as far as the command needs it: the step's tasks, each with SLURM's variables
    import json, os, subprocess, sys
    args = sys.argv[1:]
    opts = {{}}
    while args[0].startswith("--"):
        key, _, value = args.pop(0)[2:].partition("=")
        opts[key] = value
    with open({record!r}, "w") as f:
        json.dump({{"options": opts, "command": args}}, f)
    n = int(opts["ntasks"])
    procs = [subprocess.Popen(args, env={{**os.environ, "SLURM_STEP_ID": "0", "SLURM_STEP_NUM_TASKS": str(n),
                                          "SLURM_PROCID": str(r), "SLURM_LOCALID": str(r),
                                          "SLURM_STEP_NODELIST": "localhost", "MASTER_PORT": {port!r}}})
             for r in range(n)]
    sys.exit(max(p.wait() for p in procs))
""")


def test_in_a_slurm_job_the_command_becomes_srun_of_its_processes(tmp_path, data_path, alone):
    """As the workflow's SLURM job runs it: the command, alone in the job's
    batch script, hands over to srun, whose two tasks train the run."""
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    record = tmp_path / "srun.json"
    srun = bin_ / "srun"
    srun.write_text(FAKE_SRUN.format(python=sys.executable, record=str(record), port=str(distributed.free_port())))
    srun.chmod(srun.stat().st_mode | stat.S_IEXEC)
    env = _env(SLURM_JOB_ID="78", PATH=f"{bin_}{os.pathsep}{os.environ['PATH']}")
    settings = {**RUN, "processes": 2}
    done = subprocess.run(
        _command(data_path, tmp_path / "run", settings), env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "starting the run's 2 processes: srun --kill-on-bad-exit=0 --wait=120 --nodes=1 --ntasks=2" in done.stdout
    started = json.loads(record.read_text())
    assert started["options"] == {
        "kill-on-bad-exit": "0",
        "wait": "120",
        "nodes": "1",
        "ntasks": "2",
        "ntasks-per-node": "2",
        "cpus-per-task": "1",
    }
    assert started["command"][1:4] == ["-m", "negatives", "pretrain"]
    assert json.loads(started["command"][started["command"].index("--settings") + 1]) == settings
    _same_run(tmp_path / "run" / "checkpoint.pt", alone)


def test_a_one_task_allocation_spawns_the_processes_on_its_machine(tmp_path, data_path, alone):
    """An interactive allocation of one task (salloc -n1, SLURM_NTASKS=1) is
    a workstation: the command spawns its processes, it does not call srun."""
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    srun = bin_ / "srun"
    srun.write_text("#!/bin/sh\nexit 9\n")
    srun.chmod(srun.stat().st_mode | stat.S_IEXEC)
    env = _env(SLURM_JOB_ID="79", SLURM_NTASKS="1", PATH=f"{bin_}{os.pathsep}{os.environ['PATH']}")
    done = subprocess.run(
        _command(data_path, tmp_path / "run", {**RUN, "processes": 2}),
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0 and "srun" not in done.stdout, done.stdout + done.stderr
    _same_run(tmp_path / "run" / "checkpoint.pt", alone)


def test_srun_gets_each_process_its_share_of_the_threads():
    assert srun_command(4, 2, 16, ["x"]) == [
        "srun",
        "--kill-on-bad-exit=0",
        "--wait=120",
        "--nodes=2",
        "--ntasks=8",
        "--ntasks-per-node=4",
        "--cpus-per-task=4",
        "x",
    ]
    assert srun_command(3, 1, 2, ["x"])[6] == "--cpus-per-task=1"


# --------------------------------------------------------- the SLURM job asked for


class _Resources(dict):
    __getattr__ = dict.__getitem__


def _sbatch(resources: dict, threads: int) -> str:
    """The sbatch line snakemake-executor-plugin-slurm makes of a job with these resources."""
    from snakemake_executor_plugin_slurm.submit_string import get_submit_command
    from snakemake_executor_plugin_slurm.utils import set_gres_string

    job = SimpleNamespace(resources=_Resources(resources), threads=threads)
    params = {
        "run_uuid": "u",
        "slurm_logfile": "log",
        "comment_str": "c",
        "account": "-A a",
        "partition": "-p p",
        "workdir": ".",
    }
    return get_submit_command(job, params) + set_gres_string(job)


@pytest.mark.parametrize(
    "pretrain, want, absent",
    [
        (
            {"processes": 8, "nodes": 1, "threads": 32, "device": "cuda"},
            ["--nodes=1", "--ntasks-per-node=8", "--cpus-per-task=4", "--gpus=8"],
            ["--ntasks-per-gpu", "--gres"],
        ),
        (
            {"processes": 4, "nodes": 2, "threads": 32, "device": "cuda"},
            ["--nodes=2", "--ntasks-per-node=4", "--cpus-per-task=8", "--gres=gpu:4"],
            ["--ntasks-per-gpu", "--gpus"],
        ),
        (
            {"processes": 1, "nodes": 2, "threads": 8, "device": "cuda"},
            ["--nodes=2", "--ntasks=2", "--cpus-per-task=8", "--gres=gpu:1"],
            ["--ntasks-per-gpu", "--gpus"],
        ),
        (
            {"processes": 2, "nodes": 1, "threads": 2, "device": "cpu"},
            ["--nodes=1", "--ntasks-per-node=2", "--cpus-per-task=1"],
            ["--gpus", "--gres", "--ntasks="],
        ),
        (
            {"processes": 1, "nodes": 1, "threads": 4, "device": "cuda"},
            ["--gpus=1", "--cpus-per-task=4"],
            ["--nodes", "--ntasks-per-node"],
        ),
    ],
    ids=["8 GPUs", "2 nodes of 4", "2 nodes of 1", "2 CPU processes", "1 GPU"],
)
def test_the_slurm_job_asks_for_the_runs_nodes_tasks_and_gpus(pretrain, want, absent):
    resources = {"cpus_per_task": pretrain["threads"], **pretrain_resources(pretrain), "mem_mb": 1000, "runtime": 10}
    line = _sbatch(resources, pretrain["threads"])
    for flag in want:
        assert f" {flag}" in line, line
    for flag in absent:
        assert flag not in line, line
    assert ("mpi" in resources) == (pretrain["processes"] * pretrain["nodes"] > 1)


def test_the_workflow_refuses_runs_across_machines_without_slurm(tmp_path):
    """The executor is known once the plan is made: before the first job."""
    shutil.copy(ROOT / "config.yaml", tmp_path / "config.yaml")
    root = fake_fashion_mnist(tmp_path / "fmnist")
    (tmp_path / "override.yaml").write_text(
        yaml.safe_dump({"datasets": {"fashion-mnist": {"root": str(root)}}, "pretrain": {"processes": 2, "nodes": 2}})
    )
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "snakemake",
            "-s",
            str(ROOT / "Snakefile"),
            "-d",
            str(tmp_path),
            "--cores",
            "1",
            "--configfile",
            str(tmp_path / "override.yaml"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=_env(),
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out[-3000:]
    assert "pretrain.nodes: 2 machines per run need a cluster: run the workflow with --profile slurm" in out, out
    assert "Traceback" not in out and not (tmp_path / "results").exists(), out[-3000:]
