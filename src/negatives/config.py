"""Deep checks of the workflow config, run once before any job starts.

``workflow/schemas/config.schema.yaml`` checks keys, types and ranges; this
module checks what a JSON schema cannot: policy strings, relations between
keys, the dataset registry, the keys each dataset format takes, and the data
directory (its files, binary sizes and class folders).  Every error names the key
and what is allowed.  :func:`check_config` also checks the types of the keys
it reads, so it gives a clear error when called without the schema.  The
checks of one run alone (its sizes, its method and policy, GPU sharing) are
:mod:`negatives.run_checks`'s, which the entry points that start a run call too.
"""

from __future__ import annotations

import math
import os
import warnings
from numbers import Real

from .defaults import (
    ConfigError,
    check_finite,
    check_integers,
    check_partial,
    check_section,
    check_subset_size,
    check_type,
    config_value,
)
from .figure_registry import REGISTRY
from .grid import ANALYSES, FIGURES, figure_method, figure_policies
from .policies.grammar import PolicyError
from .policies.registry import parse_policy
from .run_checks import check_gpu_sharing, check_pretrain_sizes, check_run

__all__ = [
    "ConfigError",
    "check_config",
    "check_finite",
    "check_partial",
    "check_section",
    "check_milestones",
    "check_knn_k",
    "check_subset_size",
]

#: keys every ``datasets.NAME`` entry may have; the others belong to one format
#: (``negatives.data.DATASETS[name].options``)
COMMON_DATASET_KEYS = ("root", "download", "train_images", "test_images", "storage", "stream_above_gb")

#: environment variable that turns a missing or malformed data directory into a
#: warning (to plan a run -- ``snakemake -n`` -- on a machine without the data)
SKIP_DATA_CHECK = "NEGATIVES_SKIP_DATA_CHECK"


def _data_check_wanted(check_data: bool | None) -> bool:
    if check_data is not None:
        return check_data
    return os.environ.get(SKIP_DATA_CHECK, "").strip().lower() not in {"1", "true", "yes", "on"}


def _check_dataset_entry(name: str, entry: dict) -> None:
    """The keys of ``datasets.NAME`` apply to its format and have allowed values."""
    from .data.datasets import DATASETS
    from .data.prepare import STORAGES

    spec = DATASETS[name]
    for key in entry:
        if key not in COMMON_DATASET_KEYS and key not in spec.options:
            owners = [n for n, d in DATASETS.items() if key in d.options]
            raise ConfigError(
                f"datasets.{name}.{key}: does not apply to {name} (only to {', '.join(owners) or 'none'}); "
                f"allowed keys: {', '.join(COMMON_DATASET_KEYS + spec.options)}"
            )
    if entry.get("download", False) and spec.downloader is None:
        raise ConfigError(
            f"datasets.{name}.download: {name} cannot be downloaded automatically; allowed: false ({spec.hint})"
        )
    storage = entry.get("storage", "auto")
    allowed = STORAGES if spec.is_folder else tuple(s for s in STORAGES if s != "stream")
    if storage not in allowed:
        raise ConfigError(
            f"datasets.{name}.storage: {storage!r}; allowed: {', '.join(allowed)}"
            + ("" if spec.is_folder else " (stream is only for image folders)")
        )
    if "labels" in entry and entry["labels"] not in ("fine", "coarse"):
        raise ConfigError(f"datasets.{name}.labels: {entry['labels']!r}; allowed: fine, coarse")
    if "unlabeled" in entry:
        check_type(f"datasets.{name}.unlabeled", entry["unlabeled"], bool)
    if entry.get("image_size") is not None:
        check_type(f"datasets.{name}.image_size", entry["image_size"], int)


def _check_dataset(cfg: dict, check_data: bool | None = None) -> None:
    from .data.datasets import DATASETS, check_root  # lazily: numpy only when needed

    allowed = ", ".join(DATASETS)
    datasets = config_value(cfg, "datasets", dict)
    for name in datasets:
        if name not in DATASETS:
            raise ConfigError(f"datasets.{name}: unknown dataset {name!r}; allowed: {allowed}")
    name = config_value(cfg, "dataset", str)
    if name not in DATASETS:
        raise ConfigError(f"dataset: unknown dataset {name!r}; allowed: {allowed}")
    if name not in datasets:
        raise ConfigError(f"dataset: {name!r} has no entry under datasets (has: {', '.join(datasets) or 'none'})")
    for other in datasets:
        _check_dataset_entry(other, config_value(cfg, f"datasets.{other}", dict))
    root = config_value(cfg, f"datasets.{name}.root", str)
    entry = datasets[name]
    if entry.get("download", False):
        return  # the prepare job fetches what is missing
    options = {k: v for k, v in entry.items() if k in DATASETS[name].options}
    try:
        check_root(name, root, **options)
    except (FileNotFoundError, ValueError) as e:
        if _data_check_wanted(check_data):
            raise ConfigError(f"datasets.{name}.root: {e}") from None
        warnings.warn(f"datasets.{name}.root: {e} (not checked further: {SKIP_DATA_CHECK} is set)", stacklevel=2)


def _check_evaluate(cfg: dict) -> None:
    from .defaults import schema

    probes = schema()["properties"]["evaluate"]["properties"]["probe"]["enum"]
    probe = config_value(cfg, "evaluate.probe", str)
    if probe not in probes:
        raise ConfigError(f"evaluate.probe: {probe!r}; allowed: {', '.join(probes)}")
    if probe != "faithful":
        return
    config_value(cfg, "evaluate.faithful.epochs", int)
    for i, m in enumerate(config_value(cfg, "evaluate.faithful.milestones", list)):
        check_type(f"evaluate.faithful.milestones[{i}]", m, int)
    check_milestones(cfg["evaluate"]["faithful"])


def check_milestones(faithful: dict) -> None:
    """The faithful probe's learning-rate milestones are increasing epochs
    before its last (``faithful``: the ``evaluate.faithful`` section, defaults filled in)."""
    epochs, milestones = faithful["epochs"], list(faithful["milestones"])
    if any(not 0 < m < epochs for m in milestones) or milestones != sorted(set(milestones)):
        raise ConfigError(
            f"evaluate.faithful.milestones: {milestones} must be increasing epochs in 1..{epochs - 1} "
            f"(evaluate.faithful.epochs is {epochs})"
        )


def check_knn_k(knn_k: int, train: int, where: str) -> None:
    """The kNN probe's neighbours are at most the ``train`` training images (``where`` says whose)."""
    if knn_k > train:
        raise ConfigError(
            f"evaluate.knn_k: {knn_k} neighbours, but {where} holds {train} training images; allowed: at most {train}"
        )


def _check_pretrain(cfg: dict) -> None:
    check_pretrain_sizes(cfg["pretrain"] if isinstance(cfg.get("pretrain"), dict) else {})


def _check_temperatures(cfg: dict, where: str = "temperatures") -> None:
    """``temperatures`` (or a figure's own ``figures.NAME.temperatures``)."""
    temps = config_value(cfg, where, list)
    if not temps:
        raise ConfigError(f"{where}: must list at least one temperature")
    for i, t in enumerate(temps):
        key = f"{where}[{i}]"
        check_type(key, t, Real)
        if not t > 0:
            raise ConfigError(f"{key}: must be a positive number, got {t}")
        # the run folder is t{t:g}; it must name the temperature exactly
        if float(format(t, "g")) != t:
            raise ConfigError(f"{key}: {t} has more than 6 significant digits (run folders are named t{t:g})")


def _walk_policies(value, key: str, in_list: bool = False):
    """Every (key, value) under ``figures`` that must be a policy string: each
    string, and each item of a list (lists there are lists of policies)."""
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _walk_policies(v, f"{key}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _walk_policies(v, f"{key}[{i}]", in_list=True)
    elif isinstance(value, str) or in_list:
        yield key, value


def _check_figures(cfg: dict) -> None:
    for name, section in config_value(cfg, "figures", dict).items():
        if name not in REGISTRY:
            raise ConfigError(f"figures.{name}: unknown figure; allowed: {', '.join(REGISTRY)}")
        if isinstance(section, dict) and "temperatures" in section:  # the figure's own temperatures
            _check_temperatures(cfg, f"figures.{name}.temperatures")
        keys = REGISTRY[name].policy_keys  # the others hold numbers: see _check_analysis
        if isinstance(section, dict):
            section = {k: section[k] for k in keys if k in section}
        elif not keys:
            continue
        for key, text in _walk_policies(section, f"figures.{name}"):
            try:
                parse_policy(text)
            except PolicyError as e:
                raise ConfigError(f"{key}: {e}") from None


def _check_queue_fits(cfg: dict) -> None:
    """MoCo's queue holds at most one key per training image (when the config
    says how many there are)."""
    name = config_value(cfg, "dataset", str)
    train = cfg["datasets"][name].get("train_images", 0)  # 0: the whole split, whose size is not known here
    queue = config_value(cfg, "pretrain.queue_size", int)
    if train and queue > train:
        raise ConfigError(
            f"pretrain.queue_size: {queue} is larger than the {train} training images of "
            f"datasets.{name}.train_images: the queue would hold several keys of one image"
        )


def _check_analysis(cfg: dict) -> None:
    """The analysed images fit in the prepared training split, and every
    difficulty group a figure compares holds at least one negative."""
    queries = config_value(cfg, "analysis.queries", int)
    negatives = config_value(cfg, "analysis.negatives", int)
    name = config_value(cfg, "dataset", str)  # checked by _check_dataset
    train = cfg["datasets"][name].get("train_images", 0)  # 0: the whole split
    if train and queries + negatives > train:
        raise ConfigError(
            f"analysis.queries: {queries} queries + {negatives} negatives (disjoint images) do not "
            f"fit in the {train} training images of datasets.{name}.train_images"
        )
    dq = config_value(cfg, "analysis.dynamics_queries", int)
    dn = config_value(cfg, "analysis.dynamics_negatives", int)
    if train and dq + dn > train:
        raise ConfigError(
            f"analysis.dynamics_queries: {dq} queries + {dn} negatives (analysis.dynamics_negatives) do not "
            f"fit in the {train} training images of datasets.{name}.train_images"
        )
    for fig in ("fig4", "fig6"):
        key = f"figures.{fig}.hard_cut"
        cut = config_value(cfg, key, Real)
        hard = negatives - math.ceil(cut * negatives / 100)
        if not 0 < cut < 100 or not 0 < hard < negatives:
            raise ConfigError(
                f"{key}: {cut} leaves {max(hard, 0)} of the {negatives} negatives (analysis.negatives) "
                "hard; allowed: a percentile in (0, 100) leaving at least one hard and one easy negative"
            )
    key = "figures.fig5.inset_percentile"
    width = config_value(cfg, key, Real)
    if not 0 < width <= 10 or width * negatives / 100 < 1:
        raise ConfigError(
            f"{key}: {width} must hold at least one of the {negatives} negatives (analysis.negatives) "
            f"and fit in the easiest decile; allowed: {100 / negatives:g} to 10"
        )


def _check_subsets(cfg: dict) -> None:
    """The selected dataset's subsets hold every class; kNN's neighbours fit
    in its training subset (where the config says its size)."""
    from .data.datasets import known_classes

    name = config_value(cfg, "dataset", str)
    entry = cfg["datasets"][name]
    classes = known_classes(name, entry)
    for split in ("train_images", "test_images"):
        n = entry.get(split, 0)
        check_type(f"datasets.{name}.{split}", n, int)
        if classes:
            check_subset_size(f"datasets.{name}.{split}", n, classes)
    if entry.get("train_images", 0):
        check_knn_k(config_value(cfg, "evaluate.knn_k", int), entry["train_images"], f"datasets.{name}.train_images")


def _check_fewshot(cfg: dict) -> None:
    """The few-label probe's labels per class fit in the class-balanced
    training subset (when the config says its size and the dataset its classes)."""
    from .data.datasets import known_classes

    per_class = config_value(cfg, "evaluate.fewshot_labels_per_class", int)
    name = config_value(cfg, "dataset", str)
    train = cfg["datasets"][name].get("train_images", 0)  # 0: the whole split
    classes = known_classes(name, cfg["datasets"][name])
    if train and classes and per_class > train // classes:
        raise ConfigError(
            f"evaluate.fewshot_labels_per_class: {per_class} labels per class do not fit in the "
            f"{train} training images of datasets.{name}.train_images ({train // classes} per class "
            f"of {classes}); allowed: at most {train // classes}"
        )


def pretrain_has_labels(cfg: dict) -> bool:
    """Whether every pretraining image of the config's dataset has a class
    label (an unlabeled split added to pretraining has none)."""
    entry = cfg["datasets"][cfg["dataset"]]
    return not entry.get("unlabeled", False)


def _check_runs(cfg: dict) -> None:
    """Every run every figure trains makes sense with this config: its policy
    keeps at least one negative out of the method's candidates, needs labels
    only where the dataset has them, and uses replace mode only with a queue
    that has room for it."""
    for key in ("epochs", "batch_size", "queue_size"):
        config_value(cfg, f"pretrain.{key}", int)  # their types, when called without the schema
    for figure in FIGURES:
        if figure in ANALYSES:  # their runs are the baseline, 'all'
            continue
        method = figure_method(cfg, figure)
        for name in figure_policies(cfg, figure):
            check_run(method, name, cfg["pretrain"], pretrain_has_labels(cfg), where=f"figures.{figure}: ")


def check_config(cfg: dict, check_data: bool | None = None) -> None:
    """Raise :class:`ConfigError` naming the key on the first problem found.

    ``check_data``: whether a missing or malformed data directory (of the
    selected dataset, when it is not downloaded) is an error; ``None``: yes,
    unless the environment sets ``NEGATIVES_SKIP_DATA_CHECK=1``, which makes
    it a warning (to plan runs with ``snakemake -n`` where the data are not).
    """
    if not isinstance(cfg, dict):
        raise ConfigError(f"config: must be a mapping, got {type(cfg).__name__}")
    check_finite(cfg)  # first: NaN passes every range below
    _check_figures(cfg)
    _check_temperatures(cfg)
    _check_pretrain(cfg)
    check_gpu_sharing(cfg.get("jobs_per_gpu", 1), cfg.get("pretrain", {}))
    _check_dataset(cfg, check_data)
    _check_subsets(cfg)
    _check_evaluate(cfg)
    _check_analysis(cfg)
    _check_fewshot(cfg)
    _check_queue_fits(cfg)
    _check_runs(cfg)
    # last, as the jobs' own check: integer keys hold ints (Snakemake's
    # validation takes 16.0 for an integer; a job would fail on it)
    from .defaults import schema

    check_integers({k: v for k, v in cfg.items() if k in schema()["properties"]})
