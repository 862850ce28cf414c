"""Downstream evaluation of a frozen encoder.

Everything works on the *learned representation* (the backbone output,
``Encoder.represent``), extracted once per split:

* linear probe  -- the "fast probe": multinomial logistic regression on the
                   standardised features of the whole train split;
* few-label probe -- the same probe trained on ``n`` labelled images per class,
                   averaged over :data:`FEWSHOT_DRAWS` fixed class-balanced draws;
* kNN           -- the InstDisc / MoCo-demo monitor: cosine similarity, the
                   ``k`` nearest train images vote with weight ``exp(sim / t)``.

:func:`evaluate_checkpoint` runs all three and writes ``probe.json``
(docs/INTERFACES.md).
"""

from __future__ import annotations

import json

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .atomic import atomic_write
from .augment import Normalize
from .data import load_prepared, open_source
from .optim import avoid_dynamo_import

__all__ = [
    "FEWSHOT_DRAWS",
    "extract_features",
    "knn_classify",
    "topk_accuracy",
    "linear_probe",
    "fewshot_indices",
    "evaluate_checkpoint",
]

#: the few-label probe is averaged over draws with seeds 0 .. FEWSHOT_DRAWS-1,
#: the same draws for every run, so runs are compared on the same labelled images
FEWSHOT_DRAWS = 5
PROBES = ("fast", "faithful")  # faithful: negatives.probe, the paper's augmented SGD probe


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
            if (isinstance(kids[i], nn.Conv2d) and isinstance(kids[i + 1], nn.BatchNorm2d)
                    and kids[i + 1].track_running_stats):
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
        batches = (images[i:i + batch_size] for i in range(0, len(images), batch_size))
    else:
        batches = (x for x, _, _ in images.batches(torch.arange(images.num_images), batch_size))
    with torch.inference_mode():
        for x in batches:
            x = normalize(x.to(device, non_blocking=True))
            feats.append(net.represent(x.contiguous(memory_format=torch.channels_last)).float().cpu())
    return torch.cat(feats) if feats else torch.zeros(0, 0)


@torch.no_grad()
def knn_classify(train_feats: Tensor, train_labels: Tensor, test_feats: Tensor, num_classes: int,
                 k: int = 200, temperature: float = 0.1, chunk: int = 1024) -> Tensor:
    """Weighted kNN scores ``[M, num_classes]``.

    train_feats ``[N, F]``, train_labels ``[N]``, test_feats ``[M, F]``.  For
    each test row: cosine similarity to every train row, the ``k`` most similar
    (``k`` clamped to ``N``) each add ``exp(sim / temperature)`` to their class.
    """
    bank = F.normalize(train_feats.float(), dim=1)
    k = min(k, len(bank))
    scores = []
    for q in F.normalize(test_feats.float(), dim=1).split(chunk):
        sim, idx = (q @ bank.T).topk(k, dim=1, sorted=False)         # [m, k]
        votes = torch.zeros(len(q), num_classes)
        scores.append(votes.scatter_add_(1, train_labels[idx], sim.div_(temperature).exp_()))
    return torch.cat(scores) if scores else torch.zeros(0, num_classes)


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


def linear_probe(train_feats: Tensor, train_labels: Tensor, test_feats: Tensor, test_labels: Tensor,
                 num_classes: int, epochs: int = 100, lr: float = 1.0, weight_decay: float = 1e-4,
                 seed: int = 0) -> Tensor:
    """Fast linear probe; returns test scores (logits) ``[M, num_classes]``.

    train_feats ``[N, F]``, train_labels ``[N]``, test_feats ``[M, F]``
    (test_labels ``[M]`` is accepted for symmetry and not used in training).
    Features are standardised with the train mean and std; a multinomial
    logistic regression (weights and bias) minimises mean cross-entropy
    ``+ weight_decay / 2 * ||W||^2`` full-batch with L-BFGS (``epochs``
    iterations, strong-Wolfe line search).  The weights start from a small
    normal draw from ``seed``, so the result is a function of the inputs and
    ``seed``.
    """
    mu, sd = train_feats.mean(0), train_feats.std(0).clamp_min(1e-6)
    x, x_test = (train_feats - mu) / sd, (test_feats - mu) / sd
    g = torch.Generator().manual_seed(seed)
    w = (0.01 * torch.randn(x.shape[1], num_classes, generator=g)).requires_grad_()
    b = torch.zeros(num_classes, requires_grad=True)
    avoid_dynamo_import()
    opt = torch.optim.LBFGS([w, b], lr=lr, max_iter=epochs, history_size=20,
                            tolerance_grad=1e-9, tolerance_change=1e-12, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(x @ w + b, train_labels) + 0.5 * weight_decay * w.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    with torch.no_grad():
        return x_test @ w + b


def fewshot_indices(labels: Tensor, per_class: int, seed: int, num_classes: int | None = None) -> Tensor:
    """Class-balanced draw: ``per_class`` indices of each class, LongTensor
    ``[num_classes * per_class]`` grouped by class.

    labels ``[N]``; the classes are ``0 .. num_classes-1`` (default: the
    labels present).  Raises ``ValueError`` naming a class with fewer images.
    """
    classes = range(num_classes) if num_classes is not None else labels.unique().tolist()
    g = torch.Generator().manual_seed(seed)
    picks = []
    for c in classes:
        idx = (labels == c).nonzero().squeeze(1)
        if len(idx) < per_class:
            raise ValueError(f"few-label probe needs {per_class} labelled images per class, "
                             f"class {c} has only {len(idx)}")
        picks.append(idx[torch.randperm(len(idx), generator=g)[:per_class]])
    return torch.cat(picks)


def _require(settings: dict, *keys: str) -> None:
    missing = [k for k in keys if k not in settings]
    if missing:
        raise KeyError(f"evaluate settings lack {', '.join('evaluate.' + k for k in missing)}")


def evaluate_checkpoint(checkpoint_path, data_path, settings: dict, out_path) -> dict:
    """Evaluate one checkpoint and write ``probe.json`` to ``out_path``.

    settings: the config's ``evaluate`` section -- ``probe`` ('fast', or
    'faithful': the linear numbers from :func:`negatives.probe.faithful_probe`
    with the settings under ``faithful``),
    ``knn_k``, ``knn_temperature``, ``fewshot_labels_per_class``, ``threads``
    (and optionally ``device``: cpu | cuda | auto, default cpu).
    Returns the dict written.
    """
    probe = settings.get("probe", "fast")
    if probe not in PROBES:
        raise ValueError(f"evaluate.probe = {probe!r} is not implemented; allowed: {', '.join(PROBES)}")
    _require(settings, "knn_k", "knn_temperature", "fewshot_labels_per_class")
    if settings.get("threads"):
        torch.set_num_threads(int(settings["threads"]))
    device = settings.get("device", "cpu")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"

    from .train import load_encoder  # imported here: train depends on much more than evaluation does

    encoder, meta = load_encoder(checkpoint_path)
    encoder.to(device)
    data = load_prepared(data_path)
    num_classes = len(data["classes"])
    # in memory or streamed from the image files (storage: stream)
    train, test = open_source(data, "train"), open_source(data, "test")
    y_train, y_test = train.labels, test.labels
    x_train = extract_features(encoder, train, data["mean"], data["std"])
    x_test = extract_features(encoder, test, data["mean"], data["std"])

    if probe == "faithful":
        from .probe import faithful_probe

        scores = faithful_probe(encoder, data, settings.get("faithful", {}), device)
    else:
        scores = linear_probe(x_train, y_train, x_test, y_test, num_classes)
    linear = topk_accuracy(scores, y_test)

    n = int(settings["fewshot_labels_per_class"])
    draws = []
    for draw in range(FEWSHOT_DRAWS):
        idx = fewshot_indices(y_train, n, seed=draw, num_classes=num_classes)
        draws.append(topk_accuracy(linear_probe(x_train[idx], y_train[idx], x_test, y_test, num_classes), y_test))
    fewshot = {k: None if draws[0][k] is None else sum(d[k] for d in draws) / len(draws) for k in draws[0]}

    knn = topk_accuracy(knn_classify(x_train, y_train, x_test, num_classes,
                                     k=int(settings["knn_k"]), temperature=float(settings["knn_temperature"])), y_test)

    result = {key: meta[key] for key in ("dataset", "method", "policy", "temperature", "seed", "uses_labels", "epochs")}
    result["train_images_per_s"] = meta.get("train_images_per_s")  # None for random-init
    result.update(
        linear_top1=linear[1], linear_top5=linear[5],
        fewshot_top1=fewshot[1], fewshot_top5=fewshot[5], fewshot_labels_per_class=n, fewshot_draws=FEWSHOT_DRAWS,
        knn_top1=knn[1], knn_top5=knn[5],
    )
    atomic_write(out_path, lambda tmp: tmp.write_text(json.dumps(result, indent=1) + "\n"))
    return result
