"""Section 4's analysis of one trained run (``python -m negatives analyze``):
its query encoder embeds the chosen images, and :mod:`negatives.analysis.pairs`
turns the embeddings into the run's ``pairs.parquet``.  Here, beside the
probes, not in :mod:`negatives.analysis`: the figures read the tables and
must not import the config check, which reads the figure records."""

from __future__ import annotations

import json
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from ..analysis.pairs import (
    ANALYSIS_DEFAULTS,
    IDENTITY,
    PAIR_BYTES,
    difficulty,
    embed_views,
    pair_table,
    percentile_ranks,
    select_images,
)
from ..config import check_section
from ..runtime.atomic import atomic_write, check_writable

__all__ = ["analyze_checkpoint", "analysis_settings", "ChosenImages", "chosen_images"]


def analysis_settings(settings: dict) -> dict:
    """The ``analysis`` section, checked as the workflow checks the config, with the defaults."""
    check_section("analysis", settings, library_only=("batch_size", "device"))
    return {**ANALYSIS_DEFAULTS, **settings}


class ChosenImages(NamedTuple):
    """A run's query and negative images of an analysis, and how to embed them."""

    qi: np.ndarray  # [Q] training-set indices of the queries
    ni: np.ndarray  # [N] of the negatives, disjoint from the queries
    labels: torch.Tensor  # [train images] every training image's label
    sim: np.ndarray  # [C, C] WordNet similarity of the classes
    images: torch.Tensor  # uint8 [Q + N, C, H, W], the queries first
    mean: list
    std: list
    crop_scale_min: float  # the run's own crop and blur
    blur: bool

    def embed(self, encoder, seed: int, batch_size: int) -> torch.Tensor:
        """``[Q + N, D]`` one view of each image (:func:`embed_views`, ``seed``), the queries first."""
        return embed_views(encoder, self.images, self.mean, self.std, seed, batch_size, self.crop_scale_min, self.blur)


def chosen_images(meta: dict, checkpoint, data_path, similarity_tsv, queries: int, negatives: int, seed: int):
    """The images of a run's analysis: its prepared dataset (checked to be the
    one the run saw), the similarity file (checked to name its classes), and
    ``queries`` + ``negatives`` disjoint training images (:func:`select_images`, ``seed``)."""
    from ..data.similarity import read_similarity
    from ..data.sources import load_prepared, open_source, read_images
    from ..training.settings import PretrainSettings, check_matches

    data = load_prepared(data_path)
    check_matches(meta, data, checkpoint, data_path)  # the images the run was trained on
    names, sim = read_similarity(similarity_tsv)
    if names != list(data["classes"]):
        raise ValueError(f"{similarity_tsv} lists classes {names}, {data_path} has {data['classes']}")
    train = open_source(data, "train")  # in memory, or streamed from the image files
    qi, ni = select_images(train.labels.numpy(), queries, negatives, seed)
    images = read_images(train, torch.from_numpy(np.concatenate([qi, ni])))[0]
    run = PretrainSettings.from_dict(meta["settings"])
    return ChosenImages(qi, ni, train.labels, sim, images, data["mean"], data["std"], run.crop_scale_min, run.blur)


def analyze_checkpoint(checkpoint, data_path, similarity_tsv, settings: dict, out_path) -> Path:
    """Analyse one run: write ``out_path`` (``pairs.parquet``) and return it.

    Loads the query encoder of ``checkpoint`` and the prepared dataset's train
    split, picks ``settings['queries']`` queries and ``settings['negatives']``
    negatives with :func:`select_images` (``settings['seed']``), embeds one
    view each (:func:`embed_views`, same seed, the run's own crop/blur
    settings), and writes the :func:`pair_table` atomically, with the run
    identity (:data:`IDENTITY`, from the checkpoint's meta) and the settings
    as JSON values in the parquet schema metadata.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    from ..runtime.gpus import resolve_device
    from ..runtime.memory import check_fits
    from ..runtime.phases import phase
    from ..training.settings import load_encoder

    s = analysis_settings(settings)
    pairs = s["queries"] * s["negatives"]
    check_fits(
        pairs * PAIR_BYTES,
        f"analysis.queries {s['queries']} x analysis.negatives {s['negatives']} "
        f"({pairs:,} pairs, {PAIR_BYTES} bytes each)",
        "lower analysis.queries or analysis.negatives",
    )
    device = resolve_device(s["device"], "analysis device")
    check_writable(out_path)
    encoder, meta = load_encoder(checkpoint)
    encoder.to(device)
    chosen = chosen_images(meta, checkpoint, data_path, similarity_tsv, s["queries"], s["negatives"], s["seed"])
    qi, ni, labels, sim = chosen.qi, chosen.ni, chosen.labels, chosen.sim
    phase(f"embedding {len(qi)} queries and {len(ni)} negatives")
    z = chosen.embed(encoder, s["seed"], s["batch_size"])
    zq, zn = z[: len(qi)], z[len(qi) :]
    phase(f"ranking the {pairs:,} pairs and writing {out_path}")
    d = difficulty(zq, zn)
    table = pair_table(d, percentile_ranks(d), labels[qi], labels[ni], sim, qi, ni)

    at = pa.Table.from_pandas(table, preserve_index=False)
    extra = {k: json.dumps(meta.get(k)) for k in IDENTITY}
    extra["analysis"] = json.dumps({k: s[k] for k in ("queries", "negatives", "seed")})
    at = at.replace_schema_metadata(
        {**(at.schema.metadata or {}), **{k.encode(): v.encode() for k, v in extra.items()}}
    )
    return atomic_write(out_path, lambda tmp: pq.write_table(at, tmp))
