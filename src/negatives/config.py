"""Deep checks of the workflow config, run once before any job starts.

``workflow/schemas/config.schema.yaml`` checks keys, types and ranges; this
module checks what a JSON schema cannot: policy strings, relations between
keys, the dataset registry and the data directory.  Every error names the key
and what is allowed.  :func:`check_config` also checks the types of the keys
it reads, so it gives a clear error when called without the schema.
"""

from __future__ import annotations

import math
from numbers import Real

from .grid import ANALYSES, FIGURES, figure_method, figure_policies
from .policies import PolicyError, parse_policy

__all__ = ["ConfigError", "check_config"]


class ConfigError(ValueError):
    """A config value that is wrong; the message names the key."""


def _get(cfg: dict, key: str, kind: type | tuple[type, ...]):
    """``cfg`` at dotted ``key``, which must exist and be of type ``kind``."""
    value = cfg
    for part in key.split("."):
        if not isinstance(value, dict) or part not in value:
            raise ConfigError(f"{key}: missing")
        value = value[part]
    _check_type(key, value, kind)
    return value


def _check_type(key: str, value, kind) -> None:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    # bool is an int to Python, never to a config
    if (isinstance(value, bool) and bool not in kinds) or not isinstance(value, kinds):
        names = " or ".join("number" if k is Real else k.__name__ for k in kinds)
        raise ConfigError(f"{key}: must be {names}, got {value!r}")


def _check_dataset(cfg: dict) -> None:
    from .data import DATASETS, check_root  # lazily: torch/numpy only when needed

    allowed = ", ".join(DATASETS)
    datasets = _get(cfg, "datasets", dict)
    for name in datasets:
        if name not in DATASETS:
            raise ConfigError(f"datasets.{name}: unknown dataset {name!r}; allowed: {allowed}")
    name = _get(cfg, "dataset", str)
    if name not in DATASETS:
        raise ConfigError(f"dataset: unknown dataset {name!r}; allowed: {allowed}")
    if name not in datasets:
        raise ConfigError(f"dataset: {name!r} has no entry under datasets (has: {', '.join(datasets) or 'none'})")
    root = _get(cfg, f"datasets.{name}.root", str)
    if not datasets[name].get("download", False):
        try:
            check_root(name, root)
        except FileNotFoundError as e:
            raise ConfigError(f"datasets.{name}.root: {e}") from None


def _check_pretrain(cfg: dict) -> None:
    batch = _get(cfg, "pretrain.batch_size", int)
    queue = _get(cfg, "pretrain.queue_size", int)
    splits = _get(cfg, "pretrain.bn_splits", int)
    if batch < 1:
        raise ConfigError(f"pretrain.batch_size: must be at least 1, got {batch}")
    if queue < batch or queue % batch:
        raise ConfigError(
            f"pretrain.queue_size: {queue} must be a multiple of pretrain.batch_size ({batch}) "
            f"and at least as large; allowed: {batch}, {2 * batch}, {3 * batch}, ..."
        )
    if splits < 1 or batch % splits:
        raise ConfigError(f"pretrain.bn_splits: {splits} must divide pretrain.batch_size ({batch})")


def _check_temperatures(cfg: dict) -> None:
    temps = _get(cfg, "temperatures", list)
    if not temps:
        raise ConfigError("temperatures: must list at least one temperature")
    for i, t in enumerate(temps):
        key = f"temperatures[{i}]"
        _check_type(key, t, Real)
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
    for name, section in _get(cfg, "figures", dict).items():
        if name in ANALYSES:  # numbers, not policies: see _check_analysis
            continue
        for key, text in _walk_policies(section, f"figures.{name}"):
            try:
                parse_policy(text)
            except PolicyError as e:
                raise ConfigError(f"{key}: {e}") from None


def _check_analysis(cfg: dict) -> None:
    """The analysed images fit in the prepared training split, and every
    difficulty group a figure compares holds at least one negative."""
    queries = _get(cfg, "analysis.queries", int)
    negatives = _get(cfg, "analysis.negatives", int)
    name = _get(cfg, "dataset", str)  # checked by _check_dataset
    train = cfg["datasets"][name].get("train_images", 0)  # 0: the whole split
    if train and queries + negatives > train:
        raise ConfigError(f"analysis.queries: {queries} queries + {negatives} negatives (disjoint images) do not "
                          f"fit in the {train} training images of datasets.{name}.train_images")
    for fig in ("fig4", "fig6"):
        key = f"figures.{fig}.hard_cut"
        cut = _get(cfg, key, Real)
        hard = negatives - math.ceil(cut * negatives / 100)
        if not 0 < cut < 100 or not 0 < hard < negatives:
            raise ConfigError(f"{key}: {cut} leaves {max(hard, 0)} of the {negatives} negatives (analysis.negatives) "
                              "hard; allowed: a percentile in (0, 100) leaving at least one hard and one easy negative")
    key = "figures.fig5.inset_percentile"
    width = _get(cfg, key, Real)
    if not 0 < width <= 10 or width * negatives / 100 < 1:
        raise ConfigError(f"{key}: {width} must hold at least one of the {negatives} negatives (analysis.negatives) "
                          f"and fit in the easiest decile; allowed: {100 / negatives:g} to 10")


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
    from .methods import num_candidates  # lazily: torch only when needed

    epochs = _get(cfg, "pretrain.epochs", int)
    batch = _get(cfg, "pretrain.batch_size", int)
    queue = _get(cfg, "pretrain.queue_size", int)
    extra = cfg["pretrain"].get("queue_extra", 0)
    for figure in FIGURES:
        if figure not in cfg["figures"] and figure in ANALYSES:
            continue
        method = figure_method(cfg, figure)
        for name in figure_policies(cfg, figure):
            key = f"figures.{figure}: policy {name!r}"
            policy = parse_policy(name)
            try:
                policy.validate(num_candidates(method, queue, batch), epochs)
            except PolicyError as e:
                what = f"{queue} queued negatives" if method == "moco" else f"2 x {batch} - 2 in-batch negatives"
                raise ConfigError(f"{key} with {method} ({what}): {e}") from None
            if policy.uses_labels and not pretrain_has_labels(cfg):
                raise ConfigError(f"{key} removes negatives by class, but the pretraining images of "
                                  f"dataset {cfg['dataset']!r} include unlabeled ones; use a label-free policy "
                                  "or a labeled split")
            if policy.mode == "replace":
                if method != "moco":
                    raise ConfigError(f"{key}: replace mode needs MoCo's queue of older negatives; "
                                      f"{method} has none (use the drop form)")
                if extra <= 0 or extra % batch:
                    raise ConfigError(f"pretrain.queue_extra: {extra} must be a positive multiple of "
                                      f"pretrain.batch_size ({batch}) for the replace-mode policy {name!r} "
                                      f"of figures.{figure}")


def check_config(cfg: dict) -> None:
    """Raise :class:`ConfigError` naming the key on the first problem found."""
    if not isinstance(cfg, dict):
        raise ConfigError(f"config: must be a mapping, got {type(cfg).__name__}")
    _check_figures(cfg)
    _check_temperatures(cfg)
    _check_pretrain(cfg)
    _check_dataset(cfg)
    _check_analysis(cfg)
    _check_runs(cfg)
