"""The pretraining loop: seeding, the MoCo v2 step, the cosine schedule,
atomic checkpoints every epoch with resume, and a refusal to go on with a
non-finite loss.

Determinism: the model is initialised from ``seed``; every epoch reseeds the
global generator (used by the batched augmentation) and the data order from
``(seed, epoch)``, so a run resumed from the checkpoint of epoch ``e`` does
exactly what the uninterrupted run did from epoch ``e`` on (on CPU), bit for
bit, given the same ``threads``, ``processes``, ``nodes`` and ``compile``:
each of those changes the last bits, so they are part of the run.
"""

from __future__ import annotations

import csv
import math
import os
import shlex
import sys
import time
from dataclasses import asdict
from fractions import Fraction
from functools import partial
from numbers import Real
from pathlib import Path

import torch

from ..data.augment import MoCoV2Augment
from ..data.sources import FolderSource, TensorSource, load_prepared, loader_workers, open_source, open_train_source
from ..config import ConfigError, check_partial, check_run
from ..methods import build_method, num_candidates
from ..optim import SGD
from ..runtime import distributed, gpus, memory
from ..runtime import launch as launch_plan
from ..runtime.atomic import atomic_torch_save, atomic_write, check_writable
from ..runtime.locks import RankLock, RunLock
from ..runtime.versions import versions
from ..runtime.checkpoint import (REQUEUE_EXIT_CODE, Preempted, StopSignals, load_latest, previous_path, rng_state, save_rolling,
                                  set_rng_state)
from .settings import (PretrainSettings, cosine_lr, data_identity, epoch_seed, meta_differences, seeded_encoder,
                       view_crop_draws)
from .identity import keep_finished, restore_finished
from .monitor import KnnMonitor
from .step import train_step

__all__ = ["pretrain", "init_checkpoint"]


def _meta(data: dict, method: str, policy: str | None, temperature: float | None, seed: int,
          settings: PretrainSettings, epochs: int, uses_labels: bool, device_type: str) -> dict:
    """What a checkpoint records of its run: what it is (its identity, compared
    on resume and by the workflow before it plans the run) and what made it
    (the software's versions, recorded only)."""
    return {
        "dataset": data["dataset"], "method": method, "policy": policy, "temperature": temperature,
        "seed": seed, "uses_labels": uses_labels, "epochs": epochs, "settings": asdict(settings),
        "device_type": device_type, **data_identity(data), "versions": versions(),
    }


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
    meta = _meta(data, method, "random-init", None, seed, s, 0, False, "cpu")
    path = out / "checkpoint.pt"
    atomic_torch_save({"meta": meta, "encoder": enc.state_dict()}, path)
    return path


def pretrain(data_path, method: str, policy: str, temperature: float, seed: int, settings: dict,
             out_dir, log=print) -> Path:
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
    s, pol = _checked(method, policy, temperature, settings)    # bad input: an error before any work
    _check_seed(seed)
    device = gpus.resolve_device(s.device, "pretrain.device")    # a GPU asked for where there is none
    launch = None if distributed.is_distributed() else distributed.launched()
    started = distributed.world_size() if launch is None else launch.world
    if started > 1 and started != s.world:
        raise ConfigError(f"pretrain.processes {s.processes} x pretrain.nodes {s.nodes}, but this run was started "
                          f"as {started} processes ({launch.launcher if launch else 'a process group'}); make them agree")
    handover = started == 1 and s.world > 1 and launch_plan.srun_starts(s.world)
    if s.nodes > 1 and started == 1 and not handover:
        raise ConfigError(f"pretrain.nodes: {s.nodes} machines train this run, so its processes are started on each "
                          "of them by srun (snakemake --profile slurm, or this command inside a SLURM job) or "
                          "torchrun --nnodes; this process was started alone")
    if launch is not None:                                       # one of the processes srun or torchrun started
        distributed.init_launched(launch, "nccl" if device.type == "cuda" else "gloo")
        try:
            return pretrain(data_path, method, policy, temperature, seed, settings, out_dir, log)
        finally:
            distributed.destroy()
    _refuse_finished(Path(out_dir))
    check_writable(Path(out_dir) / "checkpoint.pt")
    data = load_prepared(data_path)                              # a missing or damaged file, named
    train = open_train_source(data)
    _check_fits(method, s, train.num_images)
    memory.check_pretrain(method, s, train.shape)                # before the network is allocated
    if restore_finished(Path(out_dir), partial(_meta, data, method, pol.name, temperature, seed, s, s.epochs,
                                               pol.uses_labels, device.type), log):
        return Path(out_dir) / "checkpoint.pt"
    if handover:                                                 # in a SLURM job: srun starts every process
        command = launch_plan.srun_command(s.processes, s.nodes, s.threads, launch_plan.pretrain_command(
            data_path, method, policy, temperature, seed, settings, out_dir))
        log(f"starting the run's {s.world} processes: {shlex.join(command)}")
        sys.stdout.flush()
        os.execvp(command[0], command)
    if distributed.rank() > 0:                                   # started with the others: rank 0 holds the run's lock
        with StopSignals() as stop, RankLock(out_dir, distributed.rank(), distributed.agree):  # and each one its own
            return _pretrain(data, method, pol, temperature, seed, s, out_dir, _silent, stop)
    # one run, one training; a run finished while another process held it is refused too (on every rank)
    with StopSignals() as stop, RunLock(out_dir, lambda: _refuse_finished(Path(out_dir)), distributed.agree):
        if s.processes > 1 and not distributed.is_distributed():  # this process starts the others
            backend = "nccl" if device.type == "cuda" else "gloo"
            del data                                             # each process loads its own
            distributed.spawn(_rank_main, s.processes, (data_path, method, policy, temperature, seed, settings,
                                                        out_dir), backend, exit_codes=(REQUEUE_EXIT_CODE,),
                              lock_dir=out_dir)                  # each worker locks the run too: it may outlive us
            return Path(out_dir) / "checkpoint.pt"
        return _pretrain(data, method, pol, temperature, seed, s, out_dir, log, stop)


def _silent(message: str) -> None:
    """The log of a rank other than 0 (rank 0 says everything once)."""


def _rank_main(data_path, method: str, policy: str, temperature: float, seed: int, settings: dict, out_dir) -> None:
    """One process of a run the launching process checked and locked."""
    s, pol = _checked(method, policy, temperature, settings)
    log = print if distributed.rank() == 0 else _silent
    with StopSignals() as stop:
        _pretrain(load_prepared(data_path), method, pol, temperature, seed, s, out_dir, log, stop)


def _check_fits(method: str, s: PretrainSettings, n: int) -> None:
    """The batch, and MoCo's queue (one key per image at most), fit in the ``n`` training images."""
    if s.batch_size > n:
        raise ValueError(f"pretrain.batch_size {s.batch_size} is larger than the {n} training images")
    if method == "moco" and s.queue_size > n:
        raise ValueError(f"pretrain.queue_size {s.queue_size} is larger than the {n} training images: the queue "
                         "would hold several keys of one image; lower it or use more images")


def _check_seed(seed) -> None:
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"seed: must be an integer >= 0 (an entry of seeds), got {seed!r}")


def _refuse_finished(out: Path) -> None:
    final = out / "checkpoint.pt"
    if final.exists():
        raise FileExistsError(f"{final} exists: the run is finished; delete {out} to train it again")


def _checked(method: str, policy: str, temperature: float, settings: dict):
    """``(PretrainSettings, policy)`` of a run, checked as the workflow checks
    every run it plans (:func:`negatives.config.check_run`)."""
    s = PretrainSettings.from_dict(settings)
    if not (isinstance(temperature, Real) and temperature > 0 and math.isfinite(temperature)):
        raise ConfigError(f"temperature: must be a positive number, got {temperature!r}"
                          + (" (NaN and infinity are refused)" if isinstance(temperature, float)
                             and not math.isfinite(temperature) else ""))
    return s, check_run(method, policy, asdict(s))


def _resume(last: Path, meta: dict, model, opt, device, log) -> dict | None:
    """Load the newest complete checkpoint into ``model`` and ``opt``; the
    training position it records, or ``None`` when there is none.  A resume
    that would change a setting other than a speed-only one is refused
    (threads, processes, nodes and compile included: each changes the last
    bits of the weights)."""
    found = load_latest(last, map_location=device, log=log)
    if found is None:
        return None
    state, path = found
    changed = meta_differences(state["meta"], meta)
    if changed:
        raise ValueError(f"{path} is an interrupted run of other settings or data ({'; '.join(changed)}): it is "
                         f"not resumed; set them back to resume it, or delete {path.parent / 'last*.pt'} to "
                         "start this run afresh")
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    log(f"resuming from {path} at epoch {state['epoch']} step {state['step_in_epoch']}")
    return state


def _pretrain(data: dict, method: str, pol, temperature: float, seed: int, s: PretrainSettings,
              out_dir, log, stop: StopSignals) -> Path:
    out = Path(out_dir)
    final = out / "checkpoint.pt"
    out.mkdir(parents=True, exist_ok=True)
    cpus = max(1, s.threads // s.processes)                     # the job's CPUs, shared by this machine's processes
    torch.set_num_threads(cpus)
    device = gpus.claim(gpus.resolve_device(s.device, "pretrain.device"), log=log)

    # the pretraining images (with any unlabeled ones, label -1): in memory on
    # the training device, or streamed from the image files batch by batch
    source = open_train_source(data, workers=loader_workers(cpus))   # streamed: decoders within the job's CPUs
    if isinstance(source, TensorSource):
        source = TensorSource(source.images.to(device), source.labels.to(device))
    n, (c, h, _) = source.num_images, source.shape
    channels_last = torch.channels_last

    world = distributed.world_size()
    encoder = seeded_encoder(s, c, seed, num_splits=s.bn_splits // world)
    pol.policy.start(s.epochs, num_candidates(method, s.queue_size, s.batch_size))
    model = build_method(method, encoder, pol, s, temperature,
                         generator=torch.Generator().manual_seed(epoch_seed(seed, -2))).to(device)
    model = model.to(memory_format=channels_last)
    if s.compile:
        # in place: the state dict keeps its keys, so checkpoints are the same
        # either way (before the optimiser, which then leaves dynamo alone)
        for name in ("encoder_q", "encoder_k"):
            if hasattr(model, name):
                getattr(model, name).compile()
    rows = model.image_rows(s.batch_size)                        # this rank's images of every batch
    if world > 1:  # gradients averaged over the ranks during backward; buffers averaged after each step
        model.distribute(lambda m: distributed.data_parallel(m, device))
    aug = MoCoV2Augment(h, c, data["mean"], data["std"], crop_scale=(s.crop_scale_min, 1.0), blur=s.blur).to(device)
    opt = SGD(model.encoder_q.parameters(), lr=s.lr, momentum=s.sgd_momentum, weight_decay=s.weight_decay)
    meta = _meta(data, method, pol.name, temperature, seed, s, s.epochs, pol.uses_labels, device.type)

    last = out / "last.pt"
    # room for last.pt, last.prev.pt and checkpoint.pt (model, optimiser state), known before the first step
    check_writable(final, need_bytes=3 * (_tensor_bytes(model.state_dict().values())
                                          + _tensor_bytes(model.encoder_q.parameters())))
    resumed = _resume(last, meta, model, opt, device, log)
    start_epoch, start_i, log_rows = ((resumed["epoch"], resumed["step_in_epoch"], resumed["log"]) if resumed
                                      else (0, 0, []))

    monitor = KnnMonitor(data, s.knn_monitor, device, every=s.knn_monitor_every, epochs=s.epochs)
    steps_per_epoch = n // s.batch_size
    total_steps = steps_per_epoch * s.epochs
    step = start_epoch * steps_per_epoch + start_i

    for epoch in range(start_epoch, s.epochs):
        lr = cosine_lr(s.lr, epoch, s.epochs)
        for group in opt.param_groups:
            group["lr"] = lr
        torch.manual_seed(epoch_seed(seed, epoch))
        order = torch.randperm(n, generator=torch.Generator().manual_seed(epoch_seed(seed, epoch))).to(device)
        model.train()
        t0, loss_sum, kept_sum, done = time.perf_counter(), torch.zeros((), device=device), 0.0, 0
        first = 0
        if start_i and epoch == start_epoch:  # mid-epoch resume: the draws and sums go on where they stopped
            set_rng_state(resumed["rng"], device)
            first, loss_sum, kept_sum, done = start_i, resumed["loss_sum"].to(device), resumed["kept_sum"], resumed["done"]
        # this rank's images of every batch of the epoch, in order
        mine = order[:steps_per_epoch * s.batch_size].view(steps_per_epoch, s.batch_size)[:, rows].reshape(-1)
        b = rows.stop - rows.start
        if isinstance(source, FolderSource):   # cropped as decoded, on the full image (the official pipeline)
            batches = source.view_batches(mine[first * b:].cpu(), b, view_crop_draws(seed, epoch, first, steps_per_epoch,
                                                                                 s.batch_size, rows),
                                          scale=(s.crop_scale_min, 1.0), ratio=aug.crop_ratio)
        else:
            batches = source.batches(mine[first * b:], b, drop_last=True)
        for i, (x, y, idx) in enumerate(batches, start=first):
            if s.max_steps and step >= s.max_steps:
                break
            if distributed.any_rank(stop.requested is not None, device):  # every rank stops at the same step
                # the partial sums as their mean over the ranks: a resume goes on from there on every rank
                loss_part = distributed.mean_(loss_sum.detach().clone()).cpu()
                kept_part = float(distributed.mean_(torch.as_tensor(kept_sum, dtype=torch.float64, device=device)))
                if distributed.rank() == 0:
                    save_rolling({"meta": meta, "model": model.state_dict(), "optimizer": opt.state_dict(),
                                  "epoch": epoch, "step_in_epoch": i, "log": log_rows, "rng": rng_state(device),
                                  "loss_sum": loss_part, "kept_sum": kept_part, "done": done, "processes": world}, last)
                distributed.barrier()                                # nobody exits before last.pt is written
                stopped = Preempted.saved(stop.requested, last, epoch, i)
                if stopped.code == REQUEUE_EXIT_CODE:  # Ctrl-C: said once, on stderr, by python -m negatives
                    log(str(stopped))
                raise stopped
            x, y, idx = (t.to(device, non_blocking=True) for t in (x, y, idx))
            # progress as the exact fraction: scheduled bounds count exactly
            loss, stats = train_step(model, aug, opt, x, y, idx, progress=Fraction(step, max(1, total_steps)),
                                     batch=s.batch_size, rows=rows)
            # a host sync: every step on CPU (free there), only at the end of
            # the epoch on a GPU (a non-finite loss makes every later one
            # non-finite too, and nothing is saved before the check)
            if device.type == "cpu" and distributed.any_rank(not torch.isfinite(loss)):
                _non_finite(loss, epoch, i, last)
            loss_sum += loss
            kept_sum = kept_sum + stats["kept"]
            done += 1
            step += 1
        # the epoch's loss and kept counts over every rank's queries
        loss_sum = distributed.mean_(loss_sum.detach())
        kept_sum = distributed.mean_(torch.as_tensor(kept_sum, dtype=torch.float64, device=device))
        if distributed.any_rank(not torch.isfinite(loss_sum)):
            _non_finite(loss_sum, epoch, done - 1, last)
        elapsed = time.perf_counter() - t0
        row = {
            "epoch": epoch + 1, "loss": float(loss_sum) / max(1, done), "lr": lr,
            "knn_top1": monitor(model.encoder_q, epoch) if distributed.rank() == 0 else float("nan"),
            "images_per_s": done * s.batch_size / max(elapsed, 1e-9),
            "negatives_kept": float(kept_sum) / max(1, done), "seconds": elapsed,
        }
        log_rows.append(row)
        if distributed.rank() == 0:  # one writer: every rank holds the same model
            save_rolling({"meta": meta, "model": model.state_dict(), "optimizer": opt.state_dict(),
                          "epoch": epoch + 1, "step_in_epoch": 0, "log": log_rows}, last)
        log("epoch {epoch:3d}  loss {loss:.4f}  knn {knn_top1:.2f}  {images_per_s:.0f} img/s  lr {lr:.4f}  "
            "negatives {negatives_kept:.0f}".format(**row))
        if abs(row["loss"] - math.log1p(row["negatives_kept"])) < 1e-3:
            # InfoNCE with every logit equal: the positive is no closer than any negative
            log(f"warning: the loss is log(1 + {row['negatives_kept']:.0f}) = {row['loss']:.4f}, the value of a "
                "collapsed embedding (every view maps to the same point)")
        if s.max_steps and step >= s.max_steps:
            break

    if distributed.rank() == 0:
        _write_log(log_rows, out / "train_log.csv")
        # the training cost, for the methods figure: median images/s over the epochs
        speed = sorted(r["images_per_s"] for r in log_rows)[len(log_rows) // 2] if log_rows else None
        atomic_torch_save({"meta": {**meta, "train_images_per_s": speed}, "encoder": model.encoder_q.state_dict(),
                           "model": model.state_dict(), "log": log_rows}, final)
        keep_finished(out)
        last.unlink(missing_ok=True)
        previous_path(last).unlink(missing_ok=True)
    distributed.barrier()  # nobody ends before the checkpoint is written (srun stops a step's other tasks then)
    return final


def _tensor_bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def _non_finite(loss, epoch: int, step: int, last: Path):
    raise FloatingPointError(
        f"non-finite loss {loss.item()} at epoch {epoch} step {step}; the last good checkpoint "
        f"({last if last.exists() else 'none'}) is left intact"
    )


def _write_log(rows: list[dict], path: Path) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="") as f:
            wr = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["epoch"])
            wr.writeheader()
            wr.writerows(rows)

    atomic_write(path, write)
