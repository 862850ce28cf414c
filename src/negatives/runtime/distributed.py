"""One run across processes with ``torch.distributed``: the few collectives
the methods and the trainer use, each the identity in a single process.

The layout follows facebookresearch/moco's ``main_moco.py``: one process
(rank) per device, the global batch ``B`` cut into contiguous slices of
``B / R`` images, rank ``r`` holding rows ``r B / R .. (r + 1) B / R - 1``
(:func:`local_rows`).  Gathers are in rank order, so a gathered tensor is
the single-process batch.  Nothing here reads the config; without an
initialised process group every function acts as in a one-process run.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn

__all__ = [
    "rank",
    "world_size",
    "is_distributed",
    "local_rows",
    "step_rows",
    "gather_rows",
    "gather_with_grad",
    "broadcast_",
    "sum_",
    "mean_",
    "host_group",
    "any_rank",
    "average_buffers_",
    "data_parallel",
    "barrier",
    "free_port",
    "spawn",
    "Launch",
    "launched",
    "init_launched",
    "destroy",
]

#: how long a collective waits for the other ranks before the run fails
_TIMEOUT = datetime.timedelta(minutes=10)


def is_distributed() -> bool:
    """Whether this process is one of several ranks of a run."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's rank (0 in a single process)."""
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    """How many processes share the run (1 in a single process)."""
    return dist.get_world_size() if is_distributed() else 1


def local_rows(batch: int) -> slice:
    """The rows of a global batch of ``batch`` that this rank holds (its
    contiguous slice; a ``ValueError`` when ``batch`` does not divide)."""
    r, n = rank(), world_size()
    if batch % n:
        raise ValueError(f"a global batch of {batch} cannot be cut into {n} equal slices, one per process")
    size = batch // n
    return slice(r * size, (r + 1) * size)


def step_rows(b: int) -> tuple[int, int] | None:
    """This process's ``b`` queries as ``(start, total)`` rows of the step's (``None`` alone)."""
    return None if world_size() == 1 else (rank() * b, world_size() * b)


@torch.no_grad()
def gather_rows(*tensors: Tensor) -> tuple[Tensor, ...]:
    """Each tensor ``[b, ...]`` of every rank concatenated in rank order:
    ``[R b, ...]`` (no gradient; moco's ``concat_all_gather``)."""
    if not is_distributed():
        return tensors
    out = []
    for t in tensors:
        t = t.contiguous()
        parts = [torch.empty_like(t) for _ in range(world_size())]
        dist.all_gather(parts, t)
        out.append(torch.cat(parts))
    return tuple(out)


class _GatherWithGrad(torch.autograd.Function):
    """All-gather whose backward sends every rank's gradient for a slice back
    to the slice's owner, summed (solo-learn's ``GatherLayer``; with a mean
    of per-rank losses and gradients averaged over ranks, the single-process
    gradient of the whole batch's mean)."""

    @staticmethod
    def forward(ctx, t: Tensor) -> Tensor:
        t = t.contiguous()
        parts = [torch.empty_like(t) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, t)
        ctx.rows = t.shape[0]
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        grad = grad.contiguous()
        dist.all_reduce(grad)  # every rank's gradient of every slice, summed
        r = dist.get_rank()
        return grad[r * ctx.rows : (r + 1) * ctx.rows]


def gather_with_grad(t: Tensor) -> Tensor:
    """:func:`gather_rows` of one tensor, differentiable (SimCLR's views)."""
    return _GatherWithGrad.apply(t) if is_distributed() else t


@torch.no_grad()
def broadcast_(t: Tensor, src: int = 0) -> Tensor:
    """``t`` replaced in place by rank ``src``'s (moco broadcasts its shuffle)."""
    if is_distributed():
        dist.broadcast(t, src)
    return t


@torch.no_grad()
def sum_(t: Tensor) -> Tensor:
    """``t`` replaced in place by its sum over the ranks."""
    if is_distributed():
        dist.all_reduce(t)
    return t


@torch.no_grad()
def mean_(t: Tensor) -> Tensor:
    """``t`` replaced in place by its mean over the ranks."""
    if is_distributed():
        dist.all_reduce(t)
        t.div_(world_size())
    return t


#: ``(default group, gloo group)``: the group of the host-side collectives
#: when the default group's backend takes no CPU tensors (NCCL)
_host: tuple | None = None


def host_group():
    """The process group of collectives over CPU tensors: the default group
    when its backend takes them (gloo, or a ``cpu:gloo,cuda:nccl`` group),
    else a gloo group of the same ranks, made once (every rank must reach the
    first call together: :func:`init_launched` makes it right after the
    default group)."""
    global _host
    world = dist.group.WORLD
    if "cpu:" in dist.get_backend_config(world):
        return world
    if _host is None or _host[0] is not world:
        _host = (world, dist.new_group(backend="gloo", timeout=_TIMEOUT))
    return _host[1]


def any_rank(flag: bool, device=None) -> bool:
    """Whether ``flag`` is true on any rank (every rank gets the same answer:
    a stop or a non-finite loss on one rank stops all at the same step).

    The vote is a CPU tensor reduced over :func:`host_group`: it touches no
    device tensor, so a trainer can hold it every step without waiting for a
    GPU.  ``device`` is ignored (the vote never goes to a device); it stays
    for the callers that pass the step's."""
    if not is_distributed():
        return bool(flag)
    t = torch.tensor(float(flag))
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=host_group())
    return bool(t.item())


@torch.no_grad()
def average_buffers_(module: nn.Module) -> None:
    """The batch-norm running statistics of ``module`` replaced by their mean
    over the ranks: each rank's running update saw its own splits, and the
    mean of those linear updates is the single-process update over all splits."""
    if not is_distributed():
        return
    buffers = [
        b
        for m in module.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm)
        for b in (m.running_mean, m.running_var)
        if b is not None
    ]
    if not buffers:
        return
    flat = mean_(torch.cat([b.reshape(-1) for b in buffers]))
    offset = 0
    for b in buffers:
        b.copy_(flat[offset : offset + b.numel()].view_as(b))
        offset += b.numel()


def data_parallel(module: nn.Module, device: torch.device) -> nn.Module:
    """``module`` wrapped in ``DistributedDataParallel``, gradients averaged
    over the ranks during backward; buffers are not synchronised in forward
    (the trainer averages the batch-norm statistics after each step)."""
    import inspect

    from torch.nn.parallel import DistributedDataParallel

    ids = [device] if device.type == "cuda" else None
    if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters:
        return DistributedDataParallel(module, device_ids=ids, forward_sync_buffers=False)
    return DistributedDataParallel(module, device_ids=ids, broadcast_buffers=False)


def barrier() -> None:
    """Wait until every rank is here."""
    if is_distributed():
        dist.barrier()


def free_port() -> int:
    """A TCP port nobody listens on now (the local launcher's rendezvous)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class Launch:
    """Where a started process sits in its run: its ``rank`` of ``world``
    processes, ``local_rank`` on its machine, and the rendezvous of rank 0
    (``master_addr``, ``master_port``)."""

    rank: int
    world: int
    local_rank: int
    master_addr: str
    master_port: int
    launcher: str


def _first_host(nodelist: str) -> str:
    """The first host of a SLURM node list (``gpu[03-04,07],cpu1`` -> ``gpu03``),
    as ``scontrol show hostnames`` expands it (the same rule, without a call)."""
    import re

    head = re.match(r"([^,\[]+)(?:\[([^\]]+)\])?", nodelist.strip())
    if head is None:
        raise ValueError(f"cannot read the SLURM node list {nodelist!r}")
    prefix, ranges = head.group(1), head.group(2)
    return prefix if ranges is None else prefix + ranges.split(",")[0].split("-")[0]


def launched(env=None) -> Launch | None:
    """This process's place when a launcher started the run's processes:
    torchrun (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``,
    ``MASTER_PORT``) or a SLURM job step of several tasks, ``srun``
    (``SLURM_PROCID``, ``SLURM_NTASKS``, ``SLURM_LOCALID``; rank 0's host is
    the first of the step's node list and the port follows from the job id,
    unless ``MASTER_ADDR`` / ``MASTER_PORT`` say otherwise).  ``None`` for a
    process started alone, or as the only task of a step."""
    import os

    env = os.environ if env is None else env
    if "WORLD_SIZE" in env and "RANK" in env and "MASTER_ADDR" in env:
        if int(env["WORLD_SIZE"]) < 2:
            return None
        return Launch(
            int(env["RANK"]),
            int(env["WORLD_SIZE"]),
            int(env.get("LOCAL_RANK", env["RANK"])),
            env["MASTER_ADDR"],
            int(env.get("MASTER_PORT", 29500)),
            "torchrun",
        )
    # a step of several tasks (srun sets the SLURM_STEP_* variables; a job's batch script is not a step of them)
    if int(env.get("SLURM_STEP_NUM_TASKS", 1)) > 1 and "SLURM_PROCID" in env:
        nodes = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST", "")
        addr = env.get("MASTER_ADDR") or (_first_host(nodes) if nodes else "127.0.0.1")
        port = int(env.get("MASTER_PORT") or 20000 + int(env.get("SLURM_JOB_ID", 0)) % 20000)
        return Launch(
            int(env["SLURM_PROCID"]),
            int(env["SLURM_STEP_NUM_TASKS"]),
            int(env.get("SLURM_LOCALID", 0)),
            addr,
            port,
            "srun",
        )
    return None


def init_launched(launch: Launch, backend: str) -> None:
    """Join the process group of a launched run (see :func:`launched`)."""
    import os

    os.environ.update(
        MASTER_ADDR=launch.master_addr,
        MASTER_PORT=str(launch.master_port),
        RANK=str(launch.rank),
        WORLD_SIZE=str(launch.world),
        LOCAL_RANK=str(launch.local_rank),
    )
    dist.init_process_group(backend, rank=launch.rank, world_size=launch.world, timeout=_TIMEOUT)
    if dist.get_world_size() > 1:
        host_group()  # made by every rank now, not at the first vote


def destroy() -> None:
    """Leave the process group (after :func:`init_launched`), and the gloo
    group of :func:`host_group` with it."""
    global _host
    _host = None
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def agree(refused: bool) -> bool:
    """Whether any process of the run was refused (every rank votes), or this
    process's own answer outside a process group: how the ranks of a run
    decide together whether to go on (:class:`.locks.RunLock`)."""
    return any_rank(refused) if is_distributed() else refused


def _spawned(index: int, world: int, port: int, backend: str, fn, args, parent: int, lock_dir) -> None:
    import contextlib
    import sys

    from .locks import RankLock, die_with_parent

    # the run's lock of this worker, then the launcher's death as a SIGTERM (a preemption): a launcher
    # killed with SIGKILL stops its workers, and the run stays locked until the last of them has exited
    with RankLock(lock_dir, index) if lock_dir is not None else contextlib.nullcontext():
        if not die_with_parent(parent):  # it died before it could be asked for
            print(
                f"training process {index} of {world}: the process that started it (pid {parent}) is gone; stopping",
                file=sys.stderr,
            )
            raise SystemExit(1)
        init_launched(Launch(index, world, index, "127.0.0.1", port, "spawn"), backend)
        try:
            fn(*args)
        finally:
            destroy()


def spawn(fn, processes: int, args: tuple, backend: str, exit_codes=None, lock_dir=None) -> None:
    """Run ``fn(*args)`` in ``processes`` new processes on this machine that
    form one process group (``backend``: gloo on CPU, nccl on GPUs).

    SIGTERM and SIGUSR1 sent to this process are passed on to the workers
    (they stop at the same step; Ctrl-C reaches them from the terminal).  When a worker dies, the others are
    stopped, so nobody waits in a collective.  When this process dies, however
    it dies (SIGKILL too), each worker gets SIGTERM (Linux's parent-death
    signal): they stop as on a preemption.  ``lock_dir``: each worker holds
    :class:`.locks.RankLock` of that run folder while it lives, so the run
    stays locked after this process is gone and until they are.  A worker's
    exit status comes back as ``SystemExit`` of that status when it is in
    ``exit_codes`` (the trainer's 75, a requeue) or is 130 (Ctrl-C); any other
    failure is a ``RuntimeError`` naming the worker, with its traceback."""
    import os
    import signal

    import torch.multiprocessing as mp

    from .checkpoint import INTERRUPT_EXIT_CODE, StopSignals

    ctx = mp.start_processes(
        _spawned,
        args=(processes, free_port(), backend, fn, args, os.getpid(), None if lock_dir is None else str(lock_dir)),
        nprocs=processes,
        start_method="spawn",
        join=False,
    )
    forwarded = None
    try:
        with StopSignals() as stop:
            while not ctx.join(timeout=1):
                # Ctrl-C reaches every process of the terminal's group already: not passed on (twice stops at once)
                if stop.requested and stop.requested not in (forwarded, "SIGINT"):
                    forwarded = stop.requested
                    for p in ctx.processes:
                        if p.is_alive():
                            os.kill(p.pid, getattr(signal, forwarded))
    except mp.ProcessExitedException as e:
        for p in ctx.processes:  # the others were sent SIGTERM: let them finish what they write
            p.join()
        if e.exit_code == INTERRUPT_EXIT_CODE or (exit_codes and e.exit_code in exit_codes):
            raise SystemExit(e.exit_code) from None
        raise RuntimeError(
            f"training process {e.error_index} of {processes} exited with status {e.exit_code}"
        ) from None
    except mp.ProcessRaisedException as e:
        for p in ctx.processes:
            p.join()
        raise RuntimeError(f"training process {e.error_index} of {processes} failed:\n{e.msg}") from None
