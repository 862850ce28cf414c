"""Section 4 of Cai et al. (2020) during training (``python -m negatives
dynamics``): the run's query encoder as saved after chosen epochs
(:mod:`negatives.training.snapshots`, ``pretrain.dynamics_epochs``) embeds a
fixed subset of the analysis images, and each epoch becomes one row of the
run's ``analysis/dynamics.csv``:

- Fig. 5c: the mean cosine of each difficulty decile (``cosine_decile_0``,
  the easiest 10%, .. ``cosine_decile_9``, the hardest);
- Fig. 4a / 5a: the share of the hardest 5% and of the easiest 5% of each
  query's negatives that share its class;
- Fig. 4b: the mean WordNet similarity (depth of the lowest common hypernym)
  of the hardest 5% and of the easiest 95%;
- Fig. 6: the spread (std over negatives, in % of queries) of how often a
  negative is among the hardest 5%, and the same spread of the null model
  (difficulties shuffled within each query, seeded with the run's seed, as
  Fig. 6 with its default ``null_seed`` 0).

The subset is ``analysis.dynamics_queries`` queries and
``analysis.dynamics_negatives`` negatives chosen by
:func:`negatives.analysis.pairs.select_images` with ``analysis.seed``, one
view each (:func:`~negatives.analysis.pairs.embed_views`, same seed, encoder
in eval mode): the same images and views for every run and epoch.  Labels are
read here only, never by a run's training.

A run finished before snapshots were saved has none: its final
``checkpoint.pt`` gives the last epoch, and the job says which of the run's
epochs have no snapshot.  The numbers are those of the saved weights, so
they do not depend on when this job runs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from ..analysis.pairs import (
    IDENTITY,
    deciles,
    difficulty,
    hard_frequency,
    percentile_ranks,
    shuffle_within_queries,
)
from ..runtime.atomic import atomic_write, check_writable
from .analyze import analysis_settings, chosen_images

__all__ = ["HARD_CUT", "decile_means", "masked_mean", "hard_spread", "dynamics_point", "dynamics_of_run"]

#: the hardest 5% of a query's negatives are those of percentile >= 95 (the paper's cut)
HARD_CUT = 95.0
#: the easiest 5%: percentile < 5 (Fig. 4a / 5a's other end)
EASY_CUT = 5.0


def decile_means(values: Tensor, pct: Tensor) -> Tensor:
    """Fig. 5: the mean of ``values [Q, N]`` over the pairs of each difficulty
    decile of ``pct [Q, N]`` (:func:`~negatives.analysis.pairs.deciles`).

    Returns ``[10]`` float64, decile 0 (easiest) first; NaN for an empty decile."""
    d = deciles(pct).reshape(-1)
    counts = torch.bincount(d, minlength=10).double()
    sums = torch.bincount(d, weights=values.reshape(-1).double(), minlength=10)
    return sums / counts


def masked_mean(values: Tensor, mask: Tensor) -> float:
    """Fig. 4: the mean of ``values [Q, N]`` over the pairs where ``mask [Q, N]`` holds (NaN if none)."""
    return float(values[mask].double().mean()) if bool(mask.any()) else float("nan")


def hard_spread(pct: Tensor, cut: float = HARD_CUT) -> float:
    """Fig. 6's spread: the std over negatives (population, as Fig. 6) of the
    percentage of queries for which each negative is among the hardest
    ``100 - cut`` % (:func:`~negatives.analysis.pairs.hard_frequency`) of ``pct [Q, N]``."""
    return float(hard_frequency(pct, cut).double().mul(100).std(unbiased=False))


def dynamics_point(zq: Tensor, zn: Tensor, query_labels, negative_labels, similarity, null_seed: int) -> dict:
    """One epoch's Section 4 numbers from the embeddings ``zq [Q, D]`` of the
    queries and ``zn [N, D]`` of the negatives, their labels ``[Q]``, ``[N]``
    and the classes' WordNet similarity ``[C, C]``; ``null_seed`` seeds Fig. 6's null model.

    Returns a dict: ``cosine_decile_0 .. 9``, ``same_class_hardest_5``,
    ``same_class_easiest_5``, ``wordnet_hardest_5``, ``wordnet_easiest_95``,
    ``hard_spread``, ``hard_spread_null``."""
    d = difficulty(zq, zn)
    pct = percentile_ranks(d)
    ql, nl = torch.as_tensor(np.asarray(query_labels)).long(), torch.as_tensor(np.asarray(negative_labels)).long()
    same = (ql[:, None] == nl[None, :]).double()
    wordnet = torch.as_tensor(np.asarray(similarity), dtype=torch.float64)[ql[:, None], nl[None, :]]
    hard, easy = pct >= HARD_CUT, pct < EASY_CUT
    null = percentile_ranks(shuffle_within_queries(d, null_seed))
    return {
        **{f"cosine_decile_{i}": float(m) for i, m in enumerate(decile_means(d, pct))},
        "same_class_hardest_5": masked_mean(same, hard),
        "same_class_easiest_5": masked_mean(same, easy),
        "wordnet_hardest_5": masked_mean(wordnet, hard),
        "wordnet_easiest_95": masked_mean(wordnet, ~hard),
        "hard_spread": hard_spread(pct),
        "hard_spread_null": hard_spread(null),
    }


def _encoder_states(run_dir: Path, checkpoint) -> tuple[dict[int, Path], list[int], dict]:
    """``({epoch: file}, epochs without a snapshot, the final checkpoint's meta)``:
    every snapshot, and the final checkpoint as the last epoch when no snapshot has it."""
    from ..training.settings import load_encoder, snapshot_epochs
    from ..training.snapshots import saved_snapshots

    _, meta = load_encoder(checkpoint)
    last = int(meta["epochs"])
    states = {e: p for e, p in saved_snapshots(run_dir).items() if e <= last}
    states.setdefault(last, Path(checkpoint))
    chosen = snapshot_epochs(meta["settings"].get("dynamics_epochs"), last)
    return dict(sorted(states.items())), [e for e in chosen if e not in states], meta


def _load_state(load_encoder, path: Path, epoch: int, checkpoint):
    """The encoder saved after ``epoch``; a damaged snapshot is named with what to do (none is rebuilt)."""
    try:
        return load_encoder(path)[0]
    except ValueError as e:
        if Path(path) == Path(checkpoint):
            raise
        raise ValueError(
            f"snapshot of epoch {epoch}: {e}; a snapshot is written only while its run trains: delete {path} "
            "and this run's dynamics go without that epoch"
        ) from None


def dynamics_of_run(checkpoint, data_path, similarity_tsv, settings: dict, out_path, log=print) -> Path:
    """Write the run's ``dynamics.csv`` (one row per saved epoch, see the
    module) atomically and return its path.

    Args:
        checkpoint: the run's final ``checkpoint.pt``; its folder holds ``snapshots/``.
        data_path: the prepared dataset's ``data.pt`` the run was trained on.
        similarity_tsv: the dataset's ``wordnet_similarity.tsv``.
        settings: the config's ``analysis`` section (``dynamics_queries``,
            ``dynamics_negatives``, ``seed``; ``batch_size``, ``device``).
        out_path: the CSV to write.
        log: where the epochs without a snapshot are named.
    """
    from ..runtime.gpus import resolve_device
    from ..training.settings import load_encoder

    s = analysis_settings(settings)
    device = resolve_device(s["device"], "analysis device")
    check_writable(out_path)
    states, missing, meta = _encoder_states(Path(checkpoint).parent, checkpoint)
    if missing:
        log(f"{checkpoint}: no snapshot of epochs {missing} (saved by runs trained since pretrain.dynamics_epochs)")
    chosen = chosen_images(
        meta, checkpoint, data_path, similarity_tsv, s["dynamics_queries"], s["dynamics_negatives"], s["seed"]
    )
    qi, ni, labels = chosen.qi, chosen.ni, chosen.labels
    rows = []
    for epoch, path in states.items():
        encoder = _load_state(load_encoder, path, epoch, checkpoint)
        z = chosen.embed(encoder.to(device), s["seed"], s["batch_size"])  # the same images and views every epoch
        point = dynamics_point(z[: len(qi)], z[len(qi) :], labels[qi], labels[ni], chosen.sim, int(meta["seed"]))
        rows.append({**{k: meta.get(k) for k in IDENTITY}, "epoch": epoch, **point})
    table = pd.DataFrame(rows)
    return atomic_write(out_path, lambda tmp: table.to_csv(tmp, index=False))
