"""Pretraining one run: its checks before any work, its processes (spawned,
or handed to srun), its lock, then the set-up (:mod:`.build`) and the epoch
loop (:mod:`.loop`): seeding, the MoCo v2 step, the cosine schedule, atomic
checkpoints every epoch with resume, and a refusal to go on with a
non-finite loss.

Determinism: the model is initialised from ``seed``; every epoch reseeds the
global generator (used by the batched augmentation) and the data order from
``(seed, epoch)``, so a run resumed from the checkpoint of epoch ``e`` does
exactly what the uninterrupted run did from epoch ``e`` on (on CPU), bit for
bit, given the same ``threads``, ``processes``, ``nodes`` and ``compile``:
each of those changes the last bits, so they are part of the run.
"""

from __future__ import annotations

import math
import os
import shlex
import sys
from dataclasses import asdict
from functools import partial
from numbers import Real
from pathlib import Path

from ..config import ConfigError, check_partial
from ..data.sources import load_prepared, open_source, open_train_source
from ..run_checks import check_run
from ..runtime import distributed, gpus, memory
from ..runtime import launch as launch_plan
from ..runtime.atomic import atomic_torch_save, check_writable
from ..runtime.checkpoint import REQUEUE_EXIT_CODE, StopSignals
from ..runtime.locks import RankLock, RunLock
from .build import build_training, run_meta
from .identity import restore_finished
from .loop import train
from .settings import PretrainSettings, seeded_encoder

__all__ = ["pretrain", "init_checkpoint"]


def init_checkpoint(data_path, method: str, seed: int, settings: dict, out_dir) -> Path:
    """Write the untrained encoder of run ``seed`` (the random-init reference).
    Checked as :func:`pretrain` is; an existing one is never overwritten."""
    s = PretrainSettings.from_dict(settings)
    check_partial({"method": method})
    _check_seed(seed)
    _refuse_finished(Path(out_dir))
    check_writable(Path(out_dir) / "checkpoint.pt")
    data = load_prepared(data_path)
    enc = seeded_encoder(s, int(open_source(data, "train").shape[0]), seed)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    meta = run_meta(data, method, None, None, seed, s, "cpu")
    path = out / "checkpoint.pt"
    atomic_torch_save({"meta": meta, "encoder": enc.state_dict()}, path)
    return path


def pretrain(
    data_path, method: str, policy: str, temperature: float, seed: int, settings: dict, out_dir, log=print
) -> Path:
    """Pretrain one run; writes ``out_dir/checkpoint.pt`` and ``out_dir/train_log.csv``.

    Resumes from ``out_dir/last.pt`` (or ``last.prev.pt`` when the newest is
    corrupt) when a previous attempt left one, mid-epoch included.
    The arguments are checked as the workflow checks every run it plans, before
    any work (:class:`negatives.config.ConfigError` naming the key).  Raises
    ``FileExistsError`` when the run is already finished, and
    :class:`negatives.runtime.locks.RunLocked` naming the holder when another
    process is training it.  SIGTERM or SIGUSR1 saves ``last.pt`` at the next
    step boundary and raises :class:`negatives.runtime.checkpoint.Preempted`
    (exit status 75, requeue).  With ``device`` cuda the process takes a GPU
    of its own (:mod:`negatives.runtime.gpus`).

    A run of ``processes x nodes > 1`` processes: a process started by
    torchrun or srun joins the others (:func:`negatives.runtime.distributed.launched`);
    one started alone inside a SLURM job that holds the run's tasks becomes
    ``srun`` of them (:mod:`negatives.runtime.launch`); otherwise it spawns
    ``processes`` workers on this machine.
    """
    s, pol = _checked(method, policy, temperature, settings)  # bad input: an error before any work
    _check_seed(seed)
    device = gpus.resolve_device(s.device, "pretrain.device")  # a GPU asked for where there is none
    launch, handover = _how_started(s)
    if launch is not None:  # one of the processes srun or torchrun started
        distributed.init_launched(launch, "nccl" if device.type == "cuda" else "gloo")
        try:
            return pretrain(data_path, method, policy, temperature, seed, settings, out_dir, log)
        finally:
            distributed.destroy()
    _refuse_finished(Path(out_dir))
    check_writable(Path(out_dir) / "checkpoint.pt")
    data = load_prepared(data_path)  # a missing or damaged file, named
    images = open_train_source(data)
    _check_fits(method, s, images.num_images)
    memory.check_pretrain(method, s, images.shape)  # before the network is allocated
    if restore_finished(Path(out_dir), partial(run_meta, data, method, pol, temperature, seed, s, device.type), log):
        return Path(out_dir) / "checkpoint.pt"
    if handover:  # in a SLURM job: srun starts every process
        command = launch_plan.srun_command(
            s.processes,
            s.nodes,
            s.threads,
            launch_plan.pretrain_command(data_path, method, policy, temperature, seed, settings, out_dir),
        )
        log(f"starting the run's {s.world} processes: {shlex.join(command)}")
        sys.stdout.flush()
        os.execvp(command[0], command)
    if distributed.rank() > 0:  # started with the others: rank 0 holds the run's lock
        with StopSignals() as stop, RankLock(out_dir, distributed.rank(), distributed.agree):  # and each one its own
            return train(build_training(data, method, pol, temperature, seed, s, out_dir, _silent), stop)
    # one run, one training; a run finished while another process held it is refused too (on every rank)
    with StopSignals() as stop, RunLock(out_dir, lambda: _refuse_finished(Path(out_dir)), distributed.agree):
        if s.processes > 1 and not distributed.is_distributed():  # this process starts the others
            backend = "nccl" if device.type == "cuda" else "gloo"
            del data  # each process loads its own
            distributed.spawn(
                _rank_main,
                s.processes,
                (data_path, method, policy, temperature, seed, settings, out_dir),
                backend,
                exit_codes=(REQUEUE_EXIT_CODE,),
                lock_dir=out_dir,
            )  # each worker locks the run too: it may outlive us
            return Path(out_dir) / "checkpoint.pt"
        return train(build_training(data, method, pol, temperature, seed, s, out_dir, log), stop)


def _how_started(s: PretrainSettings) -> tuple[distributed.Launch | None, bool]:
    """``(launch, handover)``: how srun or torchrun started this process with
    the others (None: alone, or already in a process group), and whether it
    hands the run to srun (alone inside a SLURM job that holds the run's
    tasks).  A start that does not match ``processes x nodes`` is refused."""
    launch = None if distributed.is_distributed() else distributed.launched()
    started = distributed.world_size() if launch is None else launch.world
    if started > 1 and started != s.world:
        raise ConfigError(
            f"pretrain.processes {s.processes} x pretrain.nodes {s.nodes}, but this run was started "
            f"as {started} processes ({launch.launcher if launch else 'a process group'}); make them agree"
        )
    handover = started == 1 and s.world > 1 and launch_plan.srun_starts(s.world)
    if s.nodes > 1 and started == 1 and not handover:
        raise ConfigError(
            f"pretrain.nodes: {s.nodes} machines train this run, so its processes are started on each "
            "of them by srun (snakemake --profile slurm, or this command inside a SLURM job) or "
            "torchrun --nnodes; this process was started alone"
        )
    return launch, handover


def _silent(message: str) -> None:
    """The log of a rank other than 0 (rank 0 says everything once)."""


def _rank_main(data_path, method: str, policy: str, temperature: float, seed: int, settings: dict, out_dir) -> None:
    """One process of a run the launching process checked and locked."""
    s, pol = _checked(method, policy, temperature, settings)
    log = print if distributed.rank() == 0 else _silent
    with StopSignals() as stop:
        train(build_training(load_prepared(data_path), method, pol, temperature, seed, s, out_dir, log), stop)


def _check_fits(method: str, s: PretrainSettings, n: int) -> None:
    """The batch, and MoCo's queue (one key per image at most), fit in the ``n`` training images."""
    if s.batch_size > n:
        raise ValueError(f"pretrain.batch_size {s.batch_size} is larger than the {n} training images")
    if method == "moco" and s.queue_size > n:
        raise ValueError(
            f"pretrain.queue_size {s.queue_size} is larger than the {n} training images: the queue "
            "would hold several keys of one image; lower it or use more images"
        )


def _check_seed(seed) -> None:
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"seed: must be an integer >= 0 (an entry of seeds), got {seed!r}")


def _refuse_finished(out: Path) -> None:
    final = out / "checkpoint.pt"
    if final.exists():
        raise FileExistsError(f"{final} exists: the run is finished; delete {out} to train it again")


def _checked(method: str, policy: str, temperature: float, settings: dict):
    """``(PretrainSettings, policy)`` of a run, checked as the workflow checks
    every run it plans (:func:`negatives.run_checks.check_run`)."""
    s = PretrainSettings.from_dict(settings)
    if not (isinstance(temperature, Real) and temperature > 0 and math.isfinite(temperature)):
        raise ConfigError(
            f"temperature: must be a positive number, got {temperature!r}"
            + (
                " (NaN and infinity are refused)"
                if isinstance(temperature, float) and not math.isfinite(temperature)
                else ""
            )
        )
    return s, check_run(method, policy, asdict(s))
