"""What a pretraining run is made of: its settings (the config's ``pretrain``
section), its seeds and learning-rate schedule, its precision, and its
encoder -- built from a seed, or loaded from a checkpoint."""

from __future__ import annotations

import contextlib
import math
import os
from dataclasses import asdict, dataclass

import torch

from ..config import check_section
from ..data.crops import crop_draws
from ..data.sources import data_digest, open_source
from ..defaults import log_only, schema_defaults, speed_only
from ..models import build_encoder
from ..run_checks import check_pretrain_sizes
from ..runtime.atomic import torch_load

__all__ = [
    "SPEED_ONLY",
    "LOG_ONLY",
    "OUTSIDE_IDENTITY",
    "ARCHITECTURE",
    "DATA_IDENTITY",
    "run_identity",
    "meta_differences",
    "data_identity",
    "check_matches",
    "PretrainSettings",
    "step_precision",
    "epoch_seed",
    "view_crop_draws",
    "cosine_lr",
    "snapshot_epochs",
    "seeded_encoder",
    "load_encoder",
]


#: settings that change how fast a run trains, never what it computes (bit for
#: bit): a resume may change them, and the workflow never retrains a finished
#: run for them.  None at present: threads, processes, nodes and compile each
#: change the last bits of the weights, so they are part of the run
SPEED_ONLY = speed_only("pretrain")
#: settings that change the training log (the kNN monitor, the progress lines), never the weights
LOG_ONLY = log_only("pretrain")
#: the ``pretrain`` keys that are no part of a run's identity: the speed-only
#: and log-only ones, and ``device``, which is compared as the device type the
#: run resolved it to (``auto`` finds the same GPU or CPU again)
OUTSIDE_IDENTITY = (*SPEED_ONLY, *LOG_ONLY, "device")
#: the settings an untrained (random-init) encoder depends on
ARCHITECTURE = ("backbone", "width", "small_stem", "dim", "hidden_dim", "bn_splits")
#: the keys of :func:`data_identity`
DATA_IDENTITY = ("in_channels", "image_size", "num_classes", "train_images", "data_digest", "data_settings")

#: the schema's defaults of the ``pretrain`` section, the only place they are written
_DEFAULTS = schema_defaults("pretrain")


@dataclass
class PretrainSettings:
    """The config's ``pretrain`` section (see config.yaml for the meaning);
    every default is the config schema's."""

    backbone: str = _DEFAULTS["backbone"]
    width: int = _DEFAULTS["width"]
    small_stem: bool = _DEFAULTS["small_stem"]
    dim: int = _DEFAULTS["dim"]
    hidden_dim: int | None = _DEFAULTS["hidden_dim"]
    epochs: int = _DEFAULTS["epochs"]
    batch_size: int = _DEFAULTS["batch_size"]
    queue_size: int = _DEFAULTS["queue_size"]
    momentum: float = _DEFAULTS["momentum"]
    lr: float = _DEFAULTS["lr"]
    weight_decay: float = _DEFAULTS["weight_decay"]
    sgd_momentum: float = _DEFAULTS["sgd_momentum"]
    bn_splits: int = _DEFAULTS["bn_splits"]
    queue_extra: int = _DEFAULTS["queue_extra"]
    threads: int = _DEFAULTS["threads"]
    processes: int = _DEFAULTS["processes"]
    nodes: int = _DEFAULTS["nodes"]
    device: str = _DEFAULTS["device"]
    compile: bool = _DEFAULTS["compile"]
    crop_scale_min: float = _DEFAULTS["crop_scale_min"]
    blur: bool = _DEFAULTS["blur"]
    knn_monitor: int = _DEFAULTS["knn_monitor"]
    knn_monitor_every: int = _DEFAULTS["knn_monitor_every"]
    share_queries: int = _DEFAULTS["share_queries"]
    log_every: float = _DEFAULTS["log_every"]
    dynamics_epochs: list[int] | None = _DEFAULTS["dynamics_epochs"]
    #: not a config key: stop after this many steps in total (0: no limit; for tests and benchmarks)
    max_steps: int = 0

    @property
    def world(self) -> int:
        """The processes that train the run: ``processes`` on each of ``nodes``."""
        return self.processes * self.nodes

    @classmethod
    def from_dict(cls, d: dict) -> PretrainSettings:
        """The settings of a ``pretrain`` section, checked as the workflow checks
        the config (:func:`negatives.config.check_section`: unknown keys, types,
        ranges; the queue, batch and split sizes); a key left out takes the
        schema's default."""
        check_section("pretrain", d, library_only=("max_steps",))
        settings = cls(**d)
        check_pretrain_sizes(asdict(settings))
        return settings


def run_identity(settings: dict, untrained: bool = False) -> dict:
    """The settings that make a run's weights what they are: every ``pretrain``
    key but :data:`OUTSIDE_IDENTITY` (only :data:`ARCHITECTURE` for an
    untrained encoder).  Two runs of one dataset, method, policy, temperature
    and seed with equal identities train the same weights; a change of any
    other key never retrains a finished run.

    >>> sorted(run_identity({"lr": 0.1, "threads": 8, "knn_monitor": 0, "device": "auto"}))
    ['lr', 'threads']
    """
    if untrained:
        return {k: v for k, v in settings.items() if k in ARCHITECTURE}
    return {k: v for k, v in settings.items() if k not in OUTSIDE_IDENTITY}


def meta_differences(saved: dict, now: dict) -> list[str]:
    """What differs between the meta of a saved checkpoint and of the run now,
    as ``key: saved -> now`` (``pretrain.KEY`` for a setting): the run's
    identity (:func:`run_identity`), the device type it resolved to and the
    data it trains on (:func:`data_identity`; a key a checkpoint does not
    record is not compared).  The versions of the software are recorded,
    not compared."""
    out = []
    for key in sorted(set(saved) | set(now)):
        if key in (*DATA_IDENTITY, "device_type") and key not in saved:  # written before it was recorded
            continue
        if key in ("versions", "train_images_per_s"):
            continue
        a, b = saved.get(key), now.get(key)
        if key == "settings" and isinstance(a, dict) and isinstance(b, dict):
            a, b = run_identity(a), run_identity(b)
            out += [
                f"pretrain.{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)
            ]
        elif key == "data_digest" and a != b:
            out.append(f"the training images (their pixels, labels or order; digest {a} -> {b})")
        elif key == "device_type" and a != b:
            out.append(f"the device: {a} -> {b} (pretrain.device)")
        elif a != b:
            out.append(f"{key}: {a!r} -> {b!r}")
    return out


def step_precision(device: torch.device):
    """The training step's precision, one context per step: bf16 autocast on
    GPUs (the encoders and the cosine matmul; MoCo and SimCLR keep the
    embeddings, cosines and loss in float32), full precision on CPU (bf16
    convolutions on CPU are slower here)."""
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of epoch ``epoch`` of run ``seed`` (epoch -1: initialisation)."""
    return (seed * 1_000_003 + epoch + 1) % (2**63)


def view_crop_draws(seed: int, epoch: int, first: int, steps: int, batch: int, rows: slice):
    """The crop draws of steps ``first ..`` of an epoch, this process's rows of
    each: ``[b, 2, D]`` per step (two views), from a generator of the run,
    epoch and step alone, so every process, and a resumed run, draws the
    single-process run's crops."""
    for step in range(first, steps):
        g = torch.Generator().manual_seed((epoch_seed(seed, epoch) * 1_000_003 + step) % 2**63)
        yield torch.stack([crop_draws(batch, generator=g), crop_draws(batch, generator=g)], dim=1)[rows]


def cosine_lr(base: float, epoch: int, epochs: int) -> float:
    """MoCo's per-epoch cosine schedule: ``base * 0.5 * (1 + cos(pi e / E))``."""
    return base * 0.5 * (1.0 + math.cos(math.pi * epoch / max(1, epochs)))


def snapshot_epochs(chosen: list[int] | None, epochs: int) -> tuple[int, ...]:
    """The epochs (1-based: after epoch ``e``) after which a run saves its
    query encoder for the Section 4 dynamics (``pretrain.dynamics_epochs``):
    ``chosen`` sorted, or for ``None`` four points spread over training,
    ``round(E i / 4)`` for ``i = 1..4`` without repeats (the last always in).

    >>> snapshot_epochs(None, 200), snapshot_epochs(None, 2), snapshot_epochs([3, 1], 4)
    ((50, 100, 150, 200), (1, 2), (1, 3))
    """
    if chosen is None:
        chosen = [round(epochs * i / 4) for i in range(1, 5)]
    return tuple(sorted({e for e in chosen if e >= 1}))


def seeded_encoder(settings: PretrainSettings, in_channels: int, seed: int, num_splits: int | None = None):
    """The untrained encoder of run ``seed`` (initialised from the seed of epoch -1);
    ``num_splits``: its batch-norm splits (default ``bn_splits``; one process's share of them)."""
    torch.manual_seed(epoch_seed(seed, -1))
    return build_encoder(
        settings.backbone,
        in_channels,
        dim=settings.dim,
        hidden_dim=settings.hidden_dim,
        num_splits=settings.bn_splits if num_splits is None else num_splits,
        width=settings.width,
        small_stem=settings.small_stem,
    )


def load_encoder(path: str | os.PathLike):
    """``checkpoint.pt -> (Encoder, meta)``: the query encoder, in eval mode, on CPU.

    A missing or damaged file, or one that is not a finished run's checkpoint
    (``last.pt``, say), is one error naming it and how to rebuild it."""
    from ..runtime.checkpoint import MAGIC

    rebuild = f"train the run (snakemake {path})"
    # a last.pt given by mistake is named as such and kept: the run resumes from it
    unfinished = (
        f"{path} is not a finished run's checkpoint.pt: a last.pt is an unfinished run's rolling "
        "checkpoint, read by the trainer only and left as it is; give the run's checkpoint.pt once the run "
        f"is finished (snakemake {os.path.join(os.path.dirname(path), 'checkpoint.pt')})"
    )
    with contextlib.suppress(OSError), open(path, "rb") as f:
        if f.read(len(MAGIC)) == MAGIC:
            raise ValueError(unfinished)
    ckpt = torch_load(path, "finished run's checkpoint", rebuild)
    if not isinstance(ckpt, dict) or not {"meta", "encoder"} <= set(ckpt):
        raise ValueError(unfinished)
    meta = ckpt["meta"]
    try:
        s = PretrainSettings.from_dict(meta["settings"])
        enc = build_encoder(
            s.backbone,
            meta["in_channels"],
            dim=s.dim,
            hidden_dim=s.hidden_dim,
            num_splits=s.bn_splits,
            width=s.width,
            small_stem=s.small_stem,
        )
        enc.load_state_dict(ckpt["encoder"])
    except (RuntimeError, KeyError, TypeError, ValueError) as e:
        # the weights are not those of the network its metadata describes: one altered, or written by other code
        lines = str(e).strip().splitlines() or [repr(e)]  # torch: a heading, then one line per mismatch
        raise ValueError(
            f"{path}: its weights do not fit the network its metadata describes "
            f"({lines[min(1, len(lines) - 1)].strip()[:200]}); "
            f"delete it and {rebuild}"
        ) from None
    return enc.eval(), meta


def data_identity(data: dict) -> dict:
    """What a checkpoint records of the prepared data it was trained on, and
    :func:`check_matches` compares: image channels, size, class count, the
    number of training images and the digest of the training split
    (:func:`negatives.data.sources.data_digest`: which images, their order
    and content)."""
    source = open_source(data, "train")
    c, h, w = source.shape
    return {
        "in_channels": int(c),
        "image_size": [int(h), int(w)],
        "num_classes": len(data["classes"]),
        "train_images": int(source.num_images),
        "data_digest": data_digest(data)["train"],
        **({"data_settings": data["settings"]} if isinstance(data.get("settings"), dict) else {}),
    }


def check_matches(meta: dict, data: dict, checkpoint_path, data_path) -> None:
    """A checkpoint is read on the data it was trained on: the same dataset,
    image channels, image size, classes and training images (a
    :class:`ValueError` naming both files otherwise; a checkpoint that does
    not record one is not compared on it)."""
    now = {"dataset": data.get("dataset"), **data_identity(data)}
    differ = [f"{k} {meta.get(k)!r} there, {v!r} here" for k, v in now.items() if k in meta and meta[k] != v]
    if "dataset" not in meta:
        differ.append("no dataset recorded")
    if not differ:
        return
    shape = ("dataset", "in_channels", "image_size", "num_classes")
    if all(meta.get(k, now[k]) == now[k] for k in shape):  # the same dataset, other images of it
        raise ValueError(
            f"{checkpoint_path} was trained on other {data.get('dataset')!r} images than {data_path} "
            f"holds ({'; '.join(differ)}): the data was prepared again with other settings or "
            "files since; evaluate it on the data.pt it was trained on, or train the run again"
        )
    raise ValueError(
        f"{checkpoint_path} was trained on {meta.get('dataset')!r} ({meta.get('in_channels')} "
        f"channels), but {data_path} holds {data.get('dataset')!r} ({now['in_channels']} channels): "
        f"{'; '.join(differ)}; give the checkpoint its own dataset's data.pt"
    )
