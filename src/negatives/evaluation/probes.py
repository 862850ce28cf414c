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
from torch import Tensor

from ..config import check_knn_k, check_milestones, check_section
from ..data.sources import data_digest, load_prepared, open_source
from ..defaults import schema_defaults, speed_only
from ..features import extract_features, knn_classify, topk_accuracy
from ..optim import avoid_dynamo_import
from ..runtime.atomic import atomic_write, check_writable
from ..runtime.gpus import resolve_device
from ..runtime.phases import phase
from ..runtime.versions import versions
from ..training.settings import check_matches, load_encoder

__all__ = [
    "FEWSHOT_DRAWS",
    "linear_probe",
    "fewshot_indices",
    "evaluation_record",
    "evaluate_checkpoint",
]

#: the few-label probe is averaged over draws with seeds 0 .. FEWSHOT_DRAWS-1,
#: the same draws for every run, so runs are compared on the same labelled images
FEWSHOT_DRAWS = 5
#: the linear probes, as the schema lists them (faithful: negatives.evaluation.faithful, the paper's SGD probe)
PROBES = ("fast", "faithful")
#: ``evaluate`` keys that change how fast, not what, a probe computes: recorded
#: apart from the evaluation (the device changes float rounding only)
RAN_WITH = (*speed_only("evaluate"), "device")


def linear_probe(
    train_feats: Tensor,
    train_labels: Tensor,
    test_feats: Tensor,
    num_classes: int,
    epochs: int = 100,
    lr: float = 1.0,
    weight_decay: float = 1e-4,
    seed: int = 0,
) -> Tensor:
    """Fast linear probe; returns test scores (logits) ``[M, num_classes]``.

    train_feats ``[N, F]``, train_labels ``[N]``, test_feats ``[M, F]``
    (the test labels score the result, :func:`topk_accuracy`; training never sees them).
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
    opt = torch.optim.LBFGS(
        [w, b],
        lr=lr,
        max_iter=epochs,
        history_size=20,
        tolerance_grad=1e-9,
        tolerance_change=1e-12,
        line_search_fn="strong_wolfe",
    )

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
            raise ValueError(
                f"few-label probe needs {per_class} labelled images per class, class {c} has only {len(idx)}"
            )
        picks.append(idx[torch.randperm(len(idx), generator=g)[:per_class]])
    return torch.cat(picks)


def _with_defaults(settings: dict) -> dict:
    """The ``evaluate`` section, checked as the workflow checks the config
    (:func:`negatives.config.check_section`), with the schema's defaults for
    the keys it lacks."""
    check_section("evaluate", settings)
    settings = {**schema_defaults("evaluate"), **settings}
    settings["faithful"] = {**schema_defaults("evaluate", "faithful"), **settings["faithful"]}
    if settings["probe"] == "faithful":
        check_milestones(settings["faithful"])
    return settings


def _check_fewshot(per_class: int, data: dict, data_path) -> None:
    """The few-label probe's draw fits in every class of the training split."""
    labels = open_source(data, "train").labels
    counts = torch.bincount(labels[labels >= 0], minlength=len(data["classes"]))
    if per_class > int(counts.min()):
        c = int(counts.argmin())
        raise ValueError(
            f"evaluate.fewshot_labels_per_class: {per_class} labels per class, but class {c} "
            f"({data['classes'][c]}) has {int(counts[c])} training images in {data_path}; "
            f"allowed: at most {int(counts.min())}"
        )


def evaluation_record(settings: dict) -> dict:
    """The settings a ``probe.json``'s numbers depend on (its ``evaluation``).

    Besides the checkpoint and the data: the ``evaluate`` section (checked,
    the schema's defaults filled in) without the keys of :data:`RAN_WITH`;
    ``faithful`` (every key, with its defaults) only for ``probe: faithful``;
    plus :data:`FEWSHOT_DRAWS`.  Two probes with different records were
    evaluated differently, and the figures refuse to compare them.

    >>> evaluation_record({})
    {'probe': 'fast', 'knn_k': 200, 'knn_temperature': 0.1, 'fewshot_labels_per_class': 10, 'fewshot_draws': 5}
    """
    settings = _with_defaults(settings)
    record = {key: value for key, value in settings.items() if key not in RAN_WITH and key != "faithful"}
    if settings["probe"] == "faithful":
        record["faithful"] = settings["faithful"]
    record["knn_temperature"] = float(record["knn_temperature"])  # 1 and 1.0: one setting
    record["fewshot_draws"] = FEWSHOT_DRAWS
    return record


def _fewshot(x_train, y_train, x_test, y_test, n: int, num_classes: int) -> dict:
    """The few-label probe's accuracies: the mean over :data:`FEWSHOT_DRAWS` draws of ``n`` labels per class."""
    draws = []
    for draw in range(FEWSHOT_DRAWS):
        idx = fewshot_indices(y_train, n, seed=draw, num_classes=num_classes)
        draws.append(topk_accuracy(linear_probe(x_train[idx], y_train[idx], x_test, num_classes), y_test))
    return {k: None if draws[0][k] is None else sum(d[k] for d in draws) / len(draws) for k in draws[0]}


def evaluate_checkpoint(checkpoint_path, data_path, settings: dict, out_path) -> dict:
    """Evaluate one checkpoint and write ``probe.json`` to ``out_path``.

    settings: the config's ``evaluate`` section -- ``probe`` ('fast', or
    'faithful': the linear numbers from :func:`negatives.evaluation.faithful.faithful_probe`
    with the settings under ``faithful``),
    ``knn_k``, ``knn_temperature``, ``fewshot_labels_per_class``, ``threads``,
    ``device`` (cpu | cuda | auto); a key it lacks takes the config schema's default.
    Returns the dict written: the run, the accuracies, ``evaluation`` (the
    settings that produced them, :func:`evaluation_record`), ``ran_with``
    (the device and torch threads: speed, not results) and ``versions``
    (:func:`negatives.runtime.versions.versions`).
    """
    settings = _with_defaults(settings)
    probe = settings["probe"]
    if probe not in PROBES:
        raise ValueError(f"evaluate.probe = {probe!r} is not implemented; allowed: {', '.join(PROBES)}")
    if settings.get("threads"):
        torch.set_num_threads(int(settings["threads"]))
    device = resolve_device(settings["device"], "evaluate.device")

    check_writable(out_path)
    encoder, meta = load_encoder(checkpoint_path)
    data = load_prepared(data_path)
    check_matches(meta, data, checkpoint_path, data_path)
    _check_fewshot(int(settings["fewshot_labels_per_class"]), data, data_path)
    # in memory or streamed from the image files (storage: stream)
    train, test = open_source(data, "train"), open_source(data, "test")
    check_knn_k(settings["knn_k"], len(train.labels), str(data_path))
    encoder.to(device)
    num_classes = len(data["classes"])
    y_train, y_test = train.labels, test.labels
    phase(f"embedding {len(y_train)} training and {len(y_test)} test images")
    x_train = extract_features(encoder, train, data["mean"], data["std"])
    x_test = extract_features(encoder, test, data["mean"], data["std"])

    phase(f"fitting the {probe} linear probe")
    if probe == "faithful":
        from .faithful import faithful_probe  # imported here: torchvision's transforms only when asked for

        scores = faithful_probe(encoder, data, settings["faithful"], device)
    else:
        scores = linear_probe(x_train, y_train, x_test, num_classes)
    linear = topk_accuracy(scores, y_test)
    n = int(settings["fewshot_labels_per_class"])
    phase(f"fitting {FEWSHOT_DRAWS} few-label probes ({n} labels per class)")
    fewshot = _fewshot(x_train, y_train, x_test, y_test, n, num_classes)
    phase(f"kNN classification of {len(y_test)} test images")
    knn = topk_accuracy(
        knn_classify(
            x_train,
            y_train,
            x_test,
            num_classes,
            k=int(settings["knn_k"]),
            temperature=float(settings["knn_temperature"]),
        ),
        y_test,
    )

    result = {key: meta[key] for key in ("dataset", "method", "policy", "temperature", "seed", "uses_labels", "epochs")}
    result["train_images_per_s"] = meta.get("train_images_per_s")  # None for random-init
    result.update(
        linear_top1=linear[1],
        linear_top5=linear[5],
        fewshot_top1=fewshot[1],
        fewshot_top5=fewshot[5],
        fewshot_labels_per_class=n,
        fewshot_draws=FEWSHOT_DRAWS,
        knn_top1=knn[1],
        knn_top5=knn[5],
        # and the images it was evaluated on: figures refuse runs evaluated on other data
        evaluation={**evaluation_record(settings), "data": data_digest(data)},
        ran_with={"device": str(device), "threads": torch.get_num_threads()},
        versions=versions(),
    )
    atomic_write(out_path, lambda tmp: tmp.write_text(json.dumps(result, indent=1) + "\n"))
    return result
