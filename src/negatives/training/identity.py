"""A finished run is never replaced by an edit of the config.

The rule: a run is its dataset, method, policy, temperature and seed (its
folder) and the settings that change its weights (:func:`run_identity`:
every ``pretrain`` key but the log-only ones and ``device``, which counts as
the device type it resolved to), on the training images it
recorded (:func:`negatives.data.sources.data_digest`).  An edit of any other
key never retrains it: the workflow leaves those keys out of what Snakemake
compares; and when Snakemake deletes a finished run's outputs to run it
again for another reason (a changed rule, ``--forcerun``), the job puts
back the second names the run kept of them (``.finished/``, hard links)
instead of training the same weights again
(:func:`negatives.training.pretrain.pretrain`).  An edit of a key in the identity is refused by
:func:`check_planned_runs` before any job is planned: the message names the
key, both values, and the two deliberate ways on (a results folder of its
own, where both stay; or deleting the runs to retrain them in place).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from .. import grid
from ..config import ConfigError
from ..data.prepare import training_data_settings
from ..runtime import distributed
from ..runtime.atomic import torch_load
from .settings import PretrainSettings, meta_differences, run_identity

__all__ = ["KEPT", "read_meta", "run_differences", "check_planned_runs", "keep_finished", "restore_finished"]


def read_meta(path: Path) -> dict | None:
    """The ``meta`` of a checkpoint, its tensors left on disk (memory-mapped),
    or ``None`` when the file cannot be read (a damaged file is named by
    whatever reads it next)."""
    import torch

    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    except Exception:  # noqa: BLE001 -- any damage: not this check's to report
        return None
    meta = ckpt.get("meta") if isinstance(ckpt, dict) else None
    return meta if isinstance(meta, dict) else None


def run_differences(meta: dict, cfg: dict, untrained: bool = False) -> list[tuple[str, object, object]]:
    """``(key, recorded, now)`` for every identity key on which a saved run
    (its checkpoint's ``meta``) differs from what the config ``cfg`` would
    train now; empty when the config would train the same weights."""
    now = run_identity(_settings(cfg), untrained)
    saved = run_identity({**_settings({"pretrain": {}}), **meta.get("settings", {})}, untrained)
    out = [
        (f"pretrain.{k}", saved.get(k), now.get(k)) for k in sorted(set(saved) | set(now)) if saved.get(k) != now.get(k)
    ]
    device = cfg["pretrain"].get("device", "auto")
    if not untrained and device != "auto" and meta.get("device_type", device) != device:
        out.append(("pretrain.device", meta["device_type"], device))
    recorded = meta.get("data_settings")
    if not untrained and isinstance(recorded, dict):  # keys one side lacks: prepared by hand, not compared
        name = meta.get("dataset")
        dataset = cfg["datasets"].get(name, {})
        current = training_data_settings(dataset)
        if dataset.get("storage", "auto") != "auto":  # auto: whichever it chose, it may choose again
            current["storage"] = dataset["storage"]
        out += [
            (f"datasets.{name}.{k}", recorded[k], current[k])
            for k in sorted(set(recorded) & set(current))
            if recorded[k] != current[k]
        ]
    return out


def _settings(cfg: dict) -> dict:
    from dataclasses import asdict

    return asdict(PretrainSettings.from_dict(dict(cfg["pretrain"])))


def _planned(cfg: dict):
    """``(run folder, untrained)`` of every run the config's figures use."""
    results = cfg.get("results", "results")
    seen = set()
    for figure in grid.FIGURES:
        for run in grid.runs_for(cfg, figure):
            folder = run.dir(results)
            if folder not in seen:
                seen.add(folder)
                yield Path(folder), False
    for seed in grid.random_init_seeds(cfg):
        yield Path(grid.random_init_dir(cfg, seed)), True


def check_planned_runs(cfg: dict) -> None:
    """Raise :class:`negatives.config.ConfigError` (one line) when a run the
    config plans is finished, or interrupted, with other identity settings
    than the config's: training it would replace the finished run (or
    resume the interrupted one on other settings).  Runs without a
    checkpoint, and checkpoints that record no settings, pass; a finished
    run of the same identity that keeps no second names of its files yet
    (finished by an older version) gets them, so that a job Snakemake runs
    again for it puts them back."""
    finished, interrupted = [], []
    for folder, untrained in _planned(cfg):
        for name, found in (("checkpoint.pt", finished), ("last.pt", interrupted)):
            path = folder / name
            if not path.is_file():
                continue
            meta = read_meta(path)
            if meta is None or "settings" not in meta:
                continue
            differ = run_differences(meta, cfg, untrained)
            if differ:
                found.append((folder, differ))
            elif name == "checkpoint.pt" and not untrained and not (folder / KEPT).exists():
                keep_finished(folder)  # a run finished before runs kept their files: from now on
            break
    if not finished and not interrupted:
        return
    runs = finished or interrupted
    folder, differ = runs[0]
    keys = "; ".join(f"{k} {a!r} there, {b!r} in the config" for k, a, b in differ[:3])
    more = f" (and {len(runs) - 1} more)" if len(runs) > 1 else ""
    if finished:
        raise ConfigError(
            f"{folder}{more} finished with other settings than the config's ({keys}): an edit never replaces a "
            "finished run; to train the new settings beside it give them a results folder of their own "
            "(--config results=NEW_FOLDER), or to retrain in place delete the finished run folders first"
        )
    raise ConfigError(
        f"{folder}/last.pt{more} is an interrupted run of other settings than the config's ({keys}): it is not "
        "resumed on them; set them back to resume it, or delete its last*.pt files to start it afresh"
    )


#: where a finished run keeps a second name (a hard link) of its checkpoint
#: and log: Snakemake deletes a job's outputs before it runs the job again
KEPT = ".finished"


def keep_finished(out: Path) -> None:
    """Give the finished run's files a second name under ``KEPT`` (a hard
    link: no second copy; a copy where the file system has none)."""
    kept = out / KEPT
    kept.mkdir(exist_ok=True)
    for name in ("checkpoint.pt", "train_log.csv"):
        (kept / name).unlink(missing_ok=True)
        try:
            os.link(out / name, kept / name)
        except OSError:
            shutil.copy2(out / name, kept / name)


def restore_finished(out: Path, meta, log) -> bool:
    """When a finished run's outputs were deleted but its kept files are there
    (Snakemake runs a job again for reasons that cannot change its weights: a
    changed rule, ``--forcerun``): put them back and say so, instead of
    training the same weights again.  A kept run of other settings or data
    than ``meta()`` (the run's meta now, made only when there is one to
    compare) is refused: an edit never replaces a finished run.  ``False``:
    nothing kept."""
    kept = out / KEPT / "checkpoint.pt"
    if (out / "checkpoint.pt").exists() or not kept.exists() or not (out / KEPT / "train_log.csv").exists():
        return False
    saved = torch_load(kept, "finished run's checkpoint", f"delete {out} to train the run again")["meta"]
    changed = meta_differences(saved, meta())
    if changed:
        raise FileExistsError(
            f"{out} finished with other settings or data ({'; '.join(changed)}): an edit never "
            f"replaces a finished run; delete {out} to train it again, or give the new settings "
            "a results folder of their own"
        )
    if distributed.rank() == 0:
        for name in ("train_log.csv", "checkpoint.pt"):  # the checkpoint last: it marks the run finished
            os.link(out / KEPT / name, out / name)
    distributed.barrier()
    log(
        f"{out} is finished with these settings: restored its checkpoint.pt and train_log.csv from {out / KEPT} "
        f"instead of training it again (delete {out} to train it again)"
    )
    return True
