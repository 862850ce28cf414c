"""Features of a frozen encoder, and the kNN classifier on them (InstDisc /
the MoCo demo's monitor: cosine similarity, the ``k`` nearest train images vote
with weight ``exp(sim / t)``).  Used by the probes and by the trainer's
per-epoch monitor, so it lies beneath both ``evaluation`` and ``training``."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .data.augment import Normalize
from .defaults import schema

__all__ = ["KNN_MIN_TEMPERATURE", "extract_features", "knn_classify", "topk_accuracy"]

#: the smallest kNN temperature, the config schema's minimum of ``evaluate.knn_temperature``:
#: down to it the smallest weight :func:`knn_classify` gives, ``exp(-2 / t)``, is a
#: normal float64 (that needs ``2 / t <= 708``, t >= 0.00283), so every weight is exact
KNN_MIN_TEMPERATURE: float = schema()["properties"]["evaluate"]["properties"]["knn_temperature"]["minimum"]


def _fuse_conv_bn(module: nn.Module) -> nn.Module:
    """An eval-mode copy of ``module`` with every ``Conv2d`` directly followed
    by a ``BatchNorm2d`` in an ``nn.Sequential`` folded into one conv (the
    same function up to float rounding; one pass over the activations less)."""
    import copy

    from torch.nn.utils.fusion import fuse_conv_bn_eval

    module = copy.deepcopy(module).eval()
    for seq in [m for m in module.modules() if isinstance(m, nn.Sequential)]:
        kids = list(seq)
        for i in range(len(kids) - 1):
            if (
                isinstance(kids[i], nn.Conv2d)
                and isinstance(kids[i + 1], nn.BatchNorm2d)
                and kids[i + 1].track_running_stats
            ):
                seq[i] = fuse_conv_bn_eval(kids[i], kids[i + 1])
                seq[i + 1] = nn.Identity()
    return module


@torch.no_grad()
def extract_features(encoder: nn.Module, images, mean, std, batch_size: int = 2048) -> Tensor:
    """uint8 images ``[N, C, H, W]`` -> backbone features ``[N, F]`` (float32, CPU).

    ``images`` may also be a source of :mod:`negatives.data` (``TensorSource``
    or a streamed ``FolderSource``): its images are read in order, batch by
    batch, so a dataset that does not fit in memory is never held whole.

    The encoder runs in eval mode (batch-norm running statistics) on its own
    device, its batch-norms folded into the preceding convolutions, in
    channels-last batches of ``batch_size``; the encoder itself is left as it
    was (a copy is run).
    """
    device = next(encoder.parameters()).device
    normalize = Normalize(mean, std).to(device)
    net = _fuse_conv_bn(encoder).to(memory_format=torch.channels_last)
    feats = []
    if isinstance(images, Tensor):
        batches = (images[i : i + batch_size] for i in range(0, len(images), batch_size))
    else:
        batches = (x for x, _, _ in images.batches(torch.arange(images.num_images), batch_size))
    with torch.inference_mode():
        for x in batches:
            x = normalize(x.to(device, non_blocking=True))
            feats.append(net.represent(x.contiguous(memory_format=torch.channels_last)).float().cpu())
    return torch.cat(feats) if feats else torch.zeros(0, 0)


@torch.no_grad()
def knn_classify(
    train_feats: Tensor,
    train_labels: Tensor,
    test_feats: Tensor,
    num_classes: int,
    k: int = 200,
    temperature: float = 0.1,
    chunk: int = 1024,
) -> Tensor:
    """Weighted kNN scores ``[M, num_classes]`` (float64).

    train_feats ``[N, F]``, train_labels ``[N]``, test_feats ``[M, F]``.  For
    each test row: cosine similarity to every train row, the ``k`` most similar
    (``k`` clamped to ``N``) each add ``exp((sim - top) / temperature)`` to
    their class, ``top`` being the row's largest similarity.  That is the vote
    ``exp(sim / temperature)`` of InstDisc times ``exp(-top / temperature)``,
    one positive factor per row, so every ranking of the classes is the
    vote's; but no weight exceeds 1, so none overflows at any temperature.
    The weights are float64: every one, at least ``exp(-2 / temperature)``,
    is a normal number (exact to float64 rounding, never flushed to 0) for
    every temperature down to :data:`KNN_MIN_TEMPERATURE`.  Similarities and
    the choice of neighbours are float32.
    """
    bank = F.normalize(train_feats.float(), dim=1)
    k = min(k, len(bank))
    if k == 0:  # no train image: no vote (and no top similarity to shift by)
        return torch.zeros(len(test_feats), num_classes, dtype=torch.float64)
    scores = []
    for q in F.normalize(test_feats.float(), dim=1).split(chunk):
        sim, idx = (q @ bank.T).topk(k, dim=1, sorted=False)  # [m, k]
        sim = sim.double()
        # exp(sim / t) in float32 is inf for t < 0.0113 (1/t > 88.7): shift each row to a top of 0
        weights = sim.sub_(sim.amax(1, keepdim=True)).div_(temperature).exp_()
        votes = torch.zeros(len(q), num_classes, dtype=torch.float64)
        scores.append(votes.scatter_add_(1, train_labels[idx], weights))
    return torch.cat(scores) if scores else torch.zeros(0, num_classes, dtype=torch.float64)


def topk_accuracy(scores: Tensor, labels: Tensor, ks=(1, 5)) -> dict:
    """Top-k accuracy in percent for each k: ``{k: pct}``.

    scores ``[M, C]``, labels ``[M]``.  A k with ``k >= C`` gives ``None``
    (top-5 is reported only for more than 5 classes).
    """
    out = {}
    for k in ks:
        if k >= scores.shape[1]:
            out[k] = None
            continue
        hit = (scores.topk(k, dim=1).indices == labels[:, None]).any(1)
        out[k] = 100.0 * hit.sum().item() / len(hit)
    return out
