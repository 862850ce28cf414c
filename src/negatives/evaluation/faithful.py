"""The paper-faithful linear probe (``evaluate.probe: faithful``).

MoCo's ``main_lincls`` recipe, which Cai et al. 2020 report: a linear
classifier on the frozen backbone representation, trained with SGD (lr 30,
momentum 0.9, no weight decay, batch 256) for 100 epochs, the learning rate
multiplied by 0.1 after epochs 60 and 80, on random-resized crops (scale
0.08-1) with horizontal flips; tested on the prepared (resized, centre-cropped)
test images.  The backbone stays frozen: no gradients, and batch-norm in eval
mode, so its running statistics never change.  Every number of the recipe is
a setting (``evaluate.faithful`` in the config), so tests can run it for two
epochs on a tiny set.

The images come from :func:`negatives.data.sources.open_source`, so the probe runs
on prepared datasets held in memory and on streamed image folders alike.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..data.augment import Normalize
from ..defaults import schema_defaults
from ..optim import SGD

__all__ = [
    "FaithfulSettings",
    "ProbeAugment",
    "frozen",
    "train_linear_classifier",
    "classifier_scores",
    "faithful_linear_probe",
    "faithful_probe",
]


#: the schema's defaults of ``evaluate.faithful``
_DEFAULTS = schema_defaults("evaluate", "faithful")


@dataclass(frozen=True)
class FaithfulSettings:
    """The config's ``evaluate.faithful`` section; every default is the
    config schema's (the paper's recipe)."""

    epochs: int = _DEFAULTS["epochs"]
    lr: float = _DEFAULTS["lr"]
    momentum: float = _DEFAULTS["momentum"]
    weight_decay: float = _DEFAULTS["weight_decay"]
    milestones: tuple[int, ...] = tuple(_DEFAULTS["milestones"])
    gamma: float = _DEFAULTS["gamma"]
    batch_size: int = _DEFAULTS["batch_size"]
    crop_scale_min: float = _DEFAULTS["crop_scale_min"]
    seed: int = _DEFAULTS["seed"]

    @classmethod
    def from_dict(cls, d: dict) -> FaithfulSettings:
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise KeyError(
                f"unknown evaluate.faithful key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(names))}"
            )
        d = dict(d)
        if "milestones" in d:
            d["milestones"] = tuple(int(m) for m in d["milestones"])
        return cls(**d)


class ProbeAugment(nn.Module):
    """Per image: RandomResizedCrop back to ``size`` (scale ``crop_scale``,
    aspect 3/4-4/3) and a horizontal flip with p=0.5, then normalisation.
    uint8 ``[B, C, H, W]`` -> float ``[B, C, size, size]``; randomness from
    torch's global generator on the batch's device."""

    def __init__(self, size: int, mean: Sequence[float], std: Sequence[float], crop_scale=(0.08, 1.0)):
        super().__init__()
        import kornia.augmentation as K

        self.ops = nn.Sequential(K.RandomResizedCrop((size, size), scale=tuple(crop_scale)), K.RandomHorizontalFlip())
        self.normalize = Normalize(mean, std)

    @torch.no_grad()
    def forward(self, x: Tensor) -> Tensor:
        if x.dtype == torch.uint8:
            x = x.float().div_(255.0)
        return self.normalize(self.ops(x))


@contextlib.contextmanager
def frozen(module: nn.Module):
    """Inside: ``module`` in eval mode (batch-norm uses, and never updates, its
    running statistics) with no parameter requiring gradients; restored after."""
    was_training = module.training
    requires = [p.requires_grad for p in module.parameters()]
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    try:
        yield module
    finally:
        for p, r in zip(module.parameters(), requires):
            p.requires_grad_(r)
        module.train(was_training)


@torch.no_grad()
def _feature_dim(backbone: nn.Module, shape, device) -> int:
    return backbone(torch.zeros((2, *shape), device=device)).shape[1]


def train_linear_classifier(
    backbone: nn.Module, source, num_classes: int, mean, std, settings: FaithfulSettings, device="cpu"
) -> nn.Linear:
    """Train ``Linear(F, num_classes)`` on ``backbone(augment(x))`` for the
    images of ``source`` (:func:`negatives.data.sources.open_source`, labels
    ``0..num_classes-1``); the backbone must already be frozen (:func:`frozen`).

    Initialised as in MoCo's lincls (weights N(0, 0.01), bias 0); each epoch
    visits the images in a random order drawn from ``settings.seed`` (the
    last batch may be short); crops and flips come from the global generator,
    which the caller seeds.
    """
    device = torch.device(device)
    size = source.shape[-1]
    augment = ProbeAugment(size, mean, std, (settings.crop_scale_min, 1.0)).to(device)
    classifier = nn.Linear(_feature_dim(backbone, source.shape, device), num_classes).to(device)
    nn.init.normal_(classifier.weight, std=0.01)
    nn.init.zeros_(classifier.bias)
    opt = SGD(classifier.parameters(), lr=settings.lr, momentum=settings.momentum, weight_decay=settings.weight_decay)
    schedule = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=list(settings.milestones), gamma=settings.gamma)
    order_gen = torch.Generator().manual_seed(settings.seed)
    for _ in range(settings.epochs):
        order = torch.randperm(source.num_images, generator=order_gen)
        for x, y, _ in source.batches(order, settings.batch_size):
            x = augment(x.to(device, non_blocking=True))
            with torch.no_grad():
                feats = backbone(x).float()  # [B, F]
            loss = F.cross_entropy(classifier(feats), y.to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        schedule.step()
    return classifier


@torch.no_grad()
def classifier_scores(
    backbone: nn.Module, classifier: nn.Linear, source, mean, std, device="cpu", batch_size: int = 256
) -> Tensor:
    """Logits ``[M, num_classes]`` (float32, CPU) of every image of ``source``,
    in order, unaugmented (the prepared, centre-cropped images)."""
    normalize = Normalize(mean, std).to(device)
    out = [
        classifier(backbone(normalize(x.to(device))).float()).cpu()
        for x, _, _ in source.batches(torch.arange(source.num_images), batch_size)
    ]
    return torch.cat(out) if out else torch.zeros(0, classifier.out_features)


def faithful_linear_probe(
    encoder: nn.Module, train, test, num_classes: int, mean, std, settings: FaithfulSettings, device="cpu"
) -> Tensor:
    """Train the probe on the sources ``train`` and score ``test``: logits
    ``[M, num_classes]``.  ``encoder``: a :class:`negatives.models.Encoder`
    (its backbone is probed; the head is not used).  The global generator is
    seeded from ``settings.seed`` inside and restored afterwards."""
    device = torch.device(device)
    devices = [device] if device.type == "cuda" else []
    with frozen(encoder.backbone) as backbone, torch.random.fork_rng(devices=devices):
        torch.manual_seed(settings.seed)
        classifier = train_linear_classifier(backbone, train, num_classes, mean, std, settings, device)
        return classifier_scores(backbone, classifier, test, mean, std, device, settings.batch_size)


def faithful_probe(encoder: nn.Module, data: dict, settings: dict, device="cpu", workers: int | None = None) -> Tensor:
    """:func:`faithful_linear_probe` on a prepared dataset (the dict of
    ``data.pt``, memory or stream): train split (labelled images only) and
    test split; ``settings``: the config's ``evaluate.faithful``."""
    from ..data.sources import open_source

    train = open_source(data, "train", workers=workers)
    test = open_source(data, "test", workers=workers)
    return faithful_linear_probe(
        encoder,
        train,
        test,
        len(data["classes"]),
        data["mean"],
        data["std"],
        FaithfulSettings.from_dict(settings),
        device,
    )
