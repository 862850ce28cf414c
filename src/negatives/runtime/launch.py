"""How one pretraining run of ``pretrain.processes`` processes on each of
``pretrain.nodes`` machines is started: the resources of its workflow job
(:func:`pretrain_resources`, called from ``workflow/rules/common.smk``) and
the ``srun`` that starts its processes inside a SLURM job
(:func:`srun_command`).  Nothing here runs a job.

Outside SLURM the job is one command that spawns its processes itself,
one GPU each (``--resources gpu=N`` counts a run's GPUs), so a run cannot
span machines there.

On SLURM (``snakemake --profile slurm``) a run of several processes is an
MPI-style job of snakemake-executor-plugin-slurm: the ``mpi`` resource makes
the plugin run the rule's command in the job's batch script (not inside
its own one-task ``srun``); ``nodes`` and ``tasks_per_node`` (or ``tasks``)
become ``sbatch --nodes --ntasks-per-node`` (``--ntasks``);
``cpus_per_task`` is each process's share of ``pretrain.threads``; the
GPUs are ``--gpus=P`` on one node (``gpu``, which the profile's
``gpu_model`` may name) or ``--gres=gpu:P`` per node on several;
``tasks_per_gpu: 0`` keeps the plugin from adding ``--ntasks-per-gpu``,
which SLURM refuses beside ``--ntasks-per-node``.  The command, finding
itself in a SLURM job, becomes ``srun`` of the run's processes
(:func:`srun_command`), so exit status 75 and the preemption signals reach
every process and SLURM's requeue (torchrun would turn a worker's 75 into
1); each process finds its rank in ``SLURM_PROCID``
(:func:`negatives.runtime.distributed.launched`).  The plugin strips the
job's ``SLURM_*`` settings from the command's environment, so ``srun`` is
told the step's tasks and CPUs again; a step sees every GPU of the job on
its node, and each process locks one (:mod:`negatives.runtime.gpus`).
``--wait`` ends a step's other tasks two minutes after one ended, so a
crashed process cannot leave the others waiting in a collective, while a
stop (every process exits 75 at the same step) keeps its status.
"""

from __future__ import annotations

import json
import os
import shutil
import sys

__all__ = [
    "pretrain_resources",
    "check_executor",
    "pretrain_command",
    "srun_command",
    "srun_starts",
    "STEP_WAIT_SECONDS",
]

#: how long srun lets a step's other tasks run after one ended
STEP_WAIT_SECONDS = 120


def pretrain_resources(pretrain: dict) -> dict:
    """The resources of one pretraining job of the config's ``pretrain``
    section (see the module docstring); the same under every executor, since
    Snakemake names the executor to a workflow only once the plan is made.

    >>> pretrain_resources({"processes": 1, "nodes": 1, "threads": 8, "device": "cuda"})
    {'gpu': 1}
    >>> pretrain_resources({"processes": 4, "nodes": 2, "threads": 16, "device": "cuda"})
    {'gpu': 0, 'gres': 'gpu:4', 'mpi': 'srun', 'nodes': 2, 'tasks_per_node': 4, 'tasks_per_gpu': 0, 'cpus_per_task': 4}
    """
    processes, nodes = pretrain.get("processes", 1), pretrain.get("nodes", 1)
    cuda = pretrain.get("device") == "cuda"
    resources = {"gpu": processes if cuda else 0}  # a local run's GPUs, counted by --resources gpu=N
    if processes * nodes == 1:
        return resources
    if cuda and nodes > 1:
        resources.update(gpu=0, gres=f"gpu:{processes}")  # per node; --gpus would be the job's total
    resources.update(mpi="srun", nodes=nodes)
    resources.update({"tasks_per_node": processes} if processes > 1 else {"tasks": processes * nodes})
    resources.update(tasks_per_gpu=0, cpus_per_task=max(1, pretrain.get("threads", 1) // processes))
    return resources


def check_executor(pretrain: dict, executor: str | None) -> None:
    """A ``ValueError`` when runs span machines (``pretrain.nodes`` > 1) and
    the workflow runs without SLURM, which alone starts them there.

    >>> check_executor({"processes": 4, "nodes": 2}, "local")
    Traceback (most recent call last):
    ValueError: pretrain.nodes: 2 machines per run need a cluster: run the workflow with --profile slurm, or set pretrain.nodes: 1 (by hand: torchrun --nnodes 2 --nproc-per-node 4 -m negatives pretrain ... on each machine)
    """
    nodes = pretrain.get("nodes", 1)
    if nodes > 1 and executor != "slurm":
        raise ValueError(
            f"pretrain.nodes: {nodes} machines per run need a cluster: run the workflow with "
            "--profile slurm, or set pretrain.nodes: 1 (by hand: torchrun --nnodes "
            f"{nodes} --nproc-per-node {pretrain.get('processes', 1)} -m negatives pretrain ... on "
            "each machine)"
        )


def srun_starts(world: int, env=None) -> bool:
    """Whether a run of ``world`` processes, started here alone, is started
    by ``srun`` instead: inside a SLURM job (``SLURM_JOB_ID``, and ``srun``
    on the path) that holds that many tasks.  The workflow's job on SLURM
    has its ``SLURM_*`` settings stripped by the executor plugin, so its
    size is the run's; an allocation that says it holds fewer tasks (an
    interactive ``salloc`` of one task, say) spawns the processes on its
    machine instead, as a workstation does.

    >>> srun_starts(2, {})
    False
    >>> srun_starts(2, {"SLURM_JOB_ID": "7", "SLURM_NTASKS": "1"})
    False
    """
    env = os.environ if env is None else env
    if not env.get("SLURM_JOB_ID") or shutil.which("srun") is None:
        return False
    return int(env.get("SLURM_NTASKS", world)) >= world


def pretrain_command(
    data_path, method: str, policy: str, temperature: float, seed: int, settings: dict, out_dir
) -> list[str]:
    """The command line of :func:`pretrain` with these arguments."""
    return [
        sys.executable,
        "-m",
        "negatives",
        "pretrain",
        "--data",
        str(data_path),
        "--method",
        method,
        "--policy",
        policy,
        "--temperature",
        repr(float(temperature)),
        "--seed",
        str(seed),
        "--settings",
        json.dumps(settings, sort_keys=True),
        "--out",
        str(out_dir),
    ]


def srun_command(processes: int, nodes: int, threads: int, command: list[str]) -> list[str]:
    """``command`` run as the ``processes * nodes`` tasks of one SLURM step.

    >>> " ".join(srun_command(4, 2, 16, ["python", "-m", "negatives", "pretrain"]))
    'srun --kill-on-bad-exit=0 --wait=120 --nodes=2 --ntasks=8 --ntasks-per-node=4 --cpus-per-task=4 python -m negatives pretrain'
    """
    return [
        "srun",
        "--kill-on-bad-exit=0",
        f"--wait={STEP_WAIT_SECONDS}",
        f"--nodes={nodes}",
        f"--ntasks={processes * nodes}",
        f"--ntasks-per-node={processes}",
        f"--cpus-per-task={max(1, threads // processes)}",
        *command,
    ]
