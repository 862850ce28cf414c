"""What a pretraining run is made of: its settings (the config's ``pretrain``
section), its seeds and learning-rate schedule, its precision, and its
encoder -- built from a seed, or loaded from a checkpoint."""

from __future__ import annotations

import contextlib
import math
import os
from dataclasses import dataclass, fields

import torch

from ..defaults import schema_defaults
from ..models import build_encoder

__all__ = ["PretrainSettings", "step_precision", "epoch_seed", "cosine_lr", "seeded_encoder", "load_encoder"]


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
    device: str = _DEFAULTS["device"]
    compile: bool = _DEFAULTS["compile"]
    crop_scale_min: float = _DEFAULTS["crop_scale_min"]
    blur: bool = _DEFAULTS["blur"]
    knn_monitor: int = _DEFAULTS["knn_monitor"]
    knn_monitor_every: int = _DEFAULTS["knn_monitor_every"]
    #: not a config key: stop after this many steps in total (0: no limit; for tests and benchmarks)
    max_steps: int = 0

    @classmethod
    def from_dict(cls, d: dict) -> "PretrainSettings":
        names = {f.name for f in fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown pretrain settings {sorted(unknown)}; allowed: {sorted(names)}")
        return cls(**d)


def step_precision(device: torch.device):
    """The training step's precision, one context per step: bf16 autocast on
    GPUs (the encoders and the cosine matmul; MoCo and SimCLR keep the
    embeddings, cosines and loss in float32), full precision on CPU (bf16
    convolutions on CPU are slower here)."""
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of epoch ``epoch`` of run ``seed`` (epoch -1: initialisation)."""
    return (seed * 1_000_003 + epoch + 1) % (2**63)


def cosine_lr(base: float, epoch: int, epochs: int) -> float:
    """MoCo's per-epoch cosine schedule: ``base * 0.5 * (1 + cos(pi e / E))``."""
    return base * 0.5 * (1.0 + math.cos(math.pi * epoch / max(1, epochs)))


def seeded_encoder(settings: PretrainSettings, in_channels: int, seed: int):
    """The untrained encoder of run ``seed`` (initialised from the seed of epoch -1)."""
    torch.manual_seed(epoch_seed(seed, -1))
    return build_encoder(settings.backbone, in_channels, dim=settings.dim, hidden_dim=settings.hidden_dim,
                         num_splits=settings.bn_splits, width=settings.width, small_stem=settings.small_stem)


def load_encoder(path: str | os.PathLike):
    """``checkpoint.pt -> (Encoder, meta)``: the query encoder, in eval mode, on CPU."""
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    meta = ckpt["meta"]
    s = PretrainSettings.from_dict(meta["settings"])
    enc = build_encoder(s.backbone, meta["in_channels"], dim=s.dim, hidden_dim=s.hidden_dim,
                        num_splits=s.bn_splits, width=s.width, small_stem=s.small_stem)
    enc.load_state_dict(ckpt["encoder"])
    return enc.eval(), meta
