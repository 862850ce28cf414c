"""What a run trains with, built once before its first step: the images on
the training device, the method around its seeded encoder, the augmentation,
the optimiser, the run's meta, the kNN monitor, and the position a previous
attempt reached (:func:`resume`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from ..data.augment import MoCoV2Augment
from ..data.sources import FolderSource, TensorSource, loader_workers, open_train_source
from ..methods import build_method, num_candidates
from ..optim import SGD
from ..runtime import distributed, gpus
from ..runtime.atomic import check_writable
from ..runtime.checkpoint import load_latest
from ..runtime.versions import versions
from .monitor import KnnMonitor
from .settings import PretrainSettings, data_identity, epoch_seed, meta_differences, seeded_encoder, snapshot_epochs

__all__ = ["Training", "build_training", "resume", "run_meta"]


def run_meta(
    data: dict, method: str, pol, temperature: float | None, seed: int, s: PretrainSettings, device_type: str
) -> dict:
    """What a checkpoint records of its run: what it is (its identity, compared
    on resume and by the workflow before it plans the run) and what made it
    (the software's versions, recorded only).  ``pol`` None: the untrained
    encoder (policy ``random-init``, no temperature, 0 epochs)."""
    return {
        "dataset": data["dataset"],
        "method": method,
        "policy": pol.name if pol else "random-init",
        "temperature": temperature,
        "seed": seed,
        "uses_labels": pol.uses_labels if pol else False,
        "epochs": s.epochs if pol else 0,
        "settings": asdict(s),
        "device_type": device_type,
        **data_identity(data),
        "versions": versions(),
    }


@dataclass
class Training:
    """One process's share of a run, ready for its first step."""

    s: PretrainSettings
    seed: int
    out: Path
    log: Callable[[str], None]
    device: torch.device
    source: TensorSource | FolderSource  # in memory on the device, or streamed from the image files
    model: nn.Module
    aug: MoCoV2Augment
    opt: SGD
    rows: slice  # this rank's images of every batch
    meta: dict
    monitor: KnnMonitor
    resumed: dict | None  # the checkpoint a previous attempt left, or None

    @property
    def last(self) -> Path:
        return self.out / "last.pt"

    @property
    def final(self) -> Path:
        return self.out / "checkpoint.pt"

    @property
    def steps_per_epoch(self) -> int:
        return self.source.num_images // self.s.batch_size


def build_training(
    data: dict, method: str, pol, temperature: float, seed: int, s: PretrainSettings, out_dir, log
) -> Training:
    """Set up a checked run in ``out_dir``: threads, device, images, model
    (the policy started), augmentation, optimiser; then resume from what a
    previous attempt left there."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cpus = max(1, s.threads // s.processes)  # the job's CPUs, shared by this machine's processes
    torch.set_num_threads(cpus)
    device = gpus.claim(gpus.resolve_device(s.device, "pretrain.device"), log=log)
    source = _source(data, cpus, device)
    c, h, _ = source.shape
    model = _model(method, pol, temperature, seed, s, c, device)
    rows = model.image_rows(s.batch_size)  # this rank's images of every batch
    if distributed.world_size() > 1:  # gradients averaged over the ranks during backward; buffers after each step
        model.distribute(lambda m: distributed.data_parallel(m, device))
    aug = MoCoV2Augment(h, c, data["mean"], data["std"], crop_scale=(s.crop_scale_min, 1.0), blur=s.blur).to(device)
    opt = SGD(model.encoder_q.parameters(), lr=s.lr, momentum=s.sgd_momentum, weight_decay=s.weight_decay)
    meta = run_meta(data, method, pol, temperature, seed, s, device.type)
    # room for last.pt, last.prev.pt and checkpoint.pt (model, optimiser state) and the encoder's
    # snapshots, known before the first step
    snapshots = len(snapshot_epochs(s.dynamics_epochs, s.epochs)) * _tensor_bytes(model.encoder_q.state_dict().values())
    check_writable(
        out / "checkpoint.pt",
        need_bytes=3 * (_tensor_bytes(model.state_dict().values()) + _tensor_bytes(model.encoder_q.parameters()))
        + snapshots,
    )
    resumed = resume(out / "last.pt", meta, model, opt, device, log)
    monitor = KnnMonitor(data, s.knn_monitor, device, every=s.knn_monitor_every, epochs=s.epochs)
    return Training(s, seed, out, log, device, source, model, aug, opt, rows, meta, monitor, resumed)


def _source(data: dict, cpus: int, device: torch.device) -> TensorSource | FolderSource:
    """The pretraining images (with any unlabeled ones, label -1): in memory on
    the training device, or streamed from the image files batch by batch."""
    source = open_train_source(data, workers=loader_workers(cpus))  # streamed: decoders within the job's CPUs
    if isinstance(source, TensorSource):
        source = TensorSource(source.images.to(device), source.labels.to(device))
    return source


def _model(
    method: str, pol, temperature: float, seed: int, s: PretrainSettings, channels: int, device: torch.device
) -> nn.Module:
    """The method around the encoder of run ``seed``, channels-last on ``device``; the policy started."""
    encoder = seeded_encoder(s, channels, seed, num_splits=s.bn_splits // distributed.world_size())
    pol.policy.start(s.epochs, num_candidates(method, s.queue_size, s.batch_size))
    model = build_method(
        method, encoder, pol, s, temperature, generator=torch.Generator().manual_seed(epoch_seed(seed, -2))
    ).to(device)
    model = model.to(memory_format=torch.channels_last)
    if s.compile:
        # in place: the state dict keeps its keys, so checkpoints are the same
        # either way (before the optimiser, which then leaves dynamo alone)
        for name in ("encoder_q", "encoder_k"):
            if hasattr(model, name):
                getattr(model, name).compile()
    return model


def resume(last: Path, meta: dict, model: nn.Module, opt, device, log) -> dict | None:
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
        raise ValueError(
            f"{path} is an interrupted run of other settings or data ({'; '.join(changed)}): it is "
            f"not resumed; set them back to resume it, or delete {path.parent / 'last*.pt'} to "
            "start this run afresh"
        )
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    log(f"resuming from {path} at epoch {state['epoch']} step {state['step_in_epoch']}")
    return state


def _tensor_bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)
