"""Section 4 of Cai et al. (2020): what distinguishes hard negatives from easy ones.

A trained run's query encoder embeds a fixed set of query images and a
disjoint set of negative images (one augmented view each) in contrastive space
(the L2-normalised head output).  For every (query, negative) pair we record
the difficulty (cosine), the negative's percentile among that query's
negatives, whether the two share a class, and the WordNet similarity of their
classes (depth of the lowest common hypernym, looked up in a precomputed
``[C, C]`` matrix, see :mod:`negatives.wordnet`).  The result is one tidy table
per run (``pairs.parquet``, docs/INTERFACES.md) that Figures 4-6 and Tables
A4-A6 summarise.

Percentiles follow the band convention of :mod:`negatives.policies`: with
``N`` negatives, the one of rank ``r`` (0 = easiest, ties broken by negative
index) has percentile ``100 r / N`` in ``[0, 100)``, so a band ``[a, b)`` of
width ``w`` holds about ``N w / 100`` negatives and each decile exactly
``N / 10`` when ``N`` is divisible by 10.

Everything except :func:`embed_views` and the reading of the tables is a pure
tensor function, vectorised over whole ``[Q, N]`` matrices (timed at 10,000 x
10,000 by benchmarks/analysis_scale.py).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..data.augment import MoCoV2Augment
from ..defaults import schema_defaults
from ..runtime.atomic import verify

__all__ = [
    "ANALYSIS_DEFAULTS",
    "COLUMNS",
    "IDENTITY",
    "embed_views",
    "select_images",
    "difficulty",
    "percentile_ranks",
    "deciles",
    "hard_frequency",
    "shuffle_within_queries",
    "pair_table",
    "PAIR_BYTES",
    "read_identity",
    "load_pairs",
]

#: The config's ``analysis`` section (the schema's defaults), plus ``batch_size``
#: and ``device``, which are not config keys (for direct calls).
ANALYSIS_DEFAULTS = {**schema_defaults("analysis"), "batch_size": 512, "device": "auto"}
#: Columns of ``pairs.parquet`` and their dtypes.
COLUMNS = {
    "query": "int32",
    "negative": "int32",
    "query_label": "int16",
    "negative_label": "int16",
    "difficulty": "float32",
    "percentile": "float32",
    "same_class": "bool",
    "wordnet": "float32",
}
#: Run identity copied from the checkpoint's meta into the parquet metadata (values as JSON).
IDENTITY = ("dataset", "method", "policy", "temperature", "seed")

_CHUNK = 1024  # rows of a [Q, N] matrix handled at once: bounds the temporaries of sorts


# ---------------------------------------------------------------- embedding


@torch.no_grad()
def embed_views(
    encoder: nn.Module,
    images: Tensor,
    mean: Sequence[float],
    std: Sequence[float],
    seed: int,
    batch_size: int = 512,
    crop_scale_min: float = 0.2,
    blur: bool = True,
) -> Tensor:
    """uint8 images ``[N, C, H, W]`` -> ``[N, D]`` float32 on CPU: one MoCo v2
    augmented view of each image, through ``encoder`` in eval mode, L2-normalised
    (contrastive space).

    The views are drawn on the CPU from torch's global generator seeded with
    ``seed`` inside :func:`torch.random.fork_rng` (the caller's RNG state is
    left as it was), in batches of ``batch_size``, so they do not depend on the
    encoder's device.  The encoder's train/eval mode is restored afterwards.
    """
    n, c, h, w = images.shape
    if h != w:
        raise ValueError(f"expected square images, got {h}x{w}")
    device = next(encoder.parameters()).device
    augment = MoCoV2Augment(h, c, mean, std, crop_scale=(crop_scale_min, 1.0), blur=blur)
    was_training = encoder.training
    encoder.eval()
    out = []
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            for i in range(0, n, batch_size):
                views = augment(images[i : i + batch_size])
                out.append(F.normalize(encoder(views.to(device)).float(), dim=1).cpu())
    finally:
        encoder.train(was_training)
    return torch.cat(out) if out else torch.empty(0, 0)


def select_images(labels, queries: int, negatives: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of ``queries`` query images and ``negatives`` negative images
    (disjoint, each sorted, int64) among ``labels [N]``, fixed by ``seed``.

    Class-balanced where possible: every class's images are shuffled and the
    classes dealt round-robin (in a shuffled class order), queries first, then
    negatives, so each class gets ``floor`` or ``ceil`` of its share until it
    runs out of images.
    """
    labels = np.asarray(labels)
    if queries + negatives > len(labels):
        raise ValueError(
            f"analysis.queries: {queries} queries + {negatives} negatives (analysis.negatives) do not "
            f"fit in the {len(labels)} training images; allowed: at most {len(labels)} together"
        )
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(labels))  # random order within each class
    lab = labels[order]
    classes, inverse = np.unique(lab, return_inverse=True)
    first = np.argsort(inverse, kind="stable")  # images grouped by class, shuffled within
    counts = np.bincount(inverse)
    rank = np.empty(len(lab), dtype=np.int64)  # position of each image within its class
    rank[first] = np.arange(len(lab)) - np.repeat(np.cumsum(counts) - counts, counts)
    class_order = rng.permutation(len(classes))[inverse]
    dealt = order[np.lexsort((class_order, rank))]  # round 0 of every class, round 1, ...
    return np.sort(dealt[:queries]), np.sort(dealt[queries : queries + negatives])


# ---------------------------------------------------------------- pairs


def difficulty(q: Tensor, n: Tensor) -> Tensor:
    """Cosine of every (query, negative): ``q [Q, D]``, ``n [N, D]`` -> ``[Q, N]`` float32."""
    return F.normalize(q.float(), dim=1) @ F.normalize(n.float(), dim=1).T


def percentile_ranks(d: Tensor) -> Tensor:
    """``d [Q, N]`` -> ``[Q, N]`` float32 in ``[0, 100)``: ``100 r / N``, ``r``
    the rank of the negative among the query's negatives (0 = easiest, ties
    broken by negative index: the lower index ranks as easier)."""
    q, n = d.shape
    out = torch.empty(q, n, dtype=torch.float32, device=d.device)
    scale = torch.arange(n, dtype=torch.float64).mul_(100.0 / n).float().to(d.device)  # < 100 for N < 1e7
    for i in range(0, q, _CHUNK):
        order = torch.sort(d[i : i + _CHUNK], dim=1, stable=True).indices
        out[i : i + _CHUNK].scatter_(1, order, scale.expand(len(order), n))
    return out


def deciles(pct: Tensor) -> Tensor:
    """Percentiles ``[...]`` -> decile ``floor(pct / 10)`` in 0..9 (int64).

    IEEE division is correctly rounded, so no float32 just below a multiple of
    10 divides up to the next integer: the deciles are exact."""
    return (pct / 10).floor_().clamp_(0, 9).long()


def hard_frequency(pct: Tensor, cut: float = 95.0) -> Tensor:
    """``pct [Q, N]`` -> ``[N]`` float32: for each negative, the fraction of
    queries for which it lies in the hardest ``100 - cut`` percent (``pct >= cut``)."""
    return (pct >= cut).sum(dim=0, dtype=torch.int64).float() / pct.shape[0]


def shuffle_within_queries(d: Tensor, seed: int) -> Tensor:
    """The null model of Fig. 6: each row of ``d [Q, N]`` permuted
    independently (``torch.randperm`` per row from a generator seeded with
    ``seed``), so every query keeps its multiset of difficulties but which
    negative gets which is random.

    Shuffling the percentiles instead of the difficulties gives the null's
    percentiles directly (every row of :func:`percentile_ranks` holds the same
    values ``100 r / N``), without sorting again."""
    g = torch.Generator().manual_seed(seed)
    q, n = d.shape
    out = torch.empty_like(d)
    for i in range(0, q, _CHUNK):
        perm = torch.stack([torch.randperm(n, generator=g) for _ in range(min(_CHUNK, q - i))])
        out[i : i + _CHUNK] = d[i : i + _CHUNK].gather(1, perm.to(d.device))
    return out


def _np(x) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, Tensor) else np.asarray(x)


#: memory one (query, negative) pair takes while analysed: the difficulty and
#: percentile matrices, the label and index columns built, the table (25
#: bytes a row) and its Arrow copy written
PAIR_BYTES = 80


def pair_table(d, pct, query_labels, negative_labels, similarity, query_idx, negative_idx) -> pd.DataFrame:
    """One row per (query, negative), query-major, with :data:`COLUMNS`.

    ``d, pct [Q, N]``; ``query_labels, query_idx [Q]``; ``negative_labels,
    negative_idx [N]`` (dataset indices); ``similarity [C, C]`` (WordNet depth
    of the lowest common hypernym; looked up by array indexing).
    """
    d, pct = _np(d), _np(pct)
    ql, nl = _np(query_labels).astype(np.int64), _np(negative_labels).astype(np.int64)
    q, n = d.shape
    if pct.shape != (q, n) or ql.shape != (q,) or nl.shape != (n,):
        raise ValueError(f"shapes disagree: d {d.shape}, pct {pct.shape}, labels {ql.shape} / {nl.shape}")
    qlab, nlab = np.repeat(ql, n), np.tile(nl, q)
    return pd.DataFrame(
        {
            "query": np.repeat(_np(query_idx), n).astype(np.int32),
            "negative": np.tile(_np(negative_idx), q).astype(np.int32),
            "query_label": qlab.astype(np.int16),
            "negative_label": nlab.astype(np.int16),
            "difficulty": d.reshape(-1).astype(np.float32),
            "percentile": pct.reshape(-1).astype(np.float32),
            "same_class": qlab == nlab,
            "wordnet": _np(similarity)[qlab, nlab].astype(np.float32),
        }
    )


# ---------------------------------------------------------------- reading the tables


def read_identity(path) -> dict:
    """The run identity of a ``pairs.parquet`` (``dataset, method, policy,
    temperature, seed``, plus ``analysis``: the settings it was made with)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rebuild = f"delete it and analyse the run again (snakemake {path})"
    verify(path, "pairs table", f"analyse the run (snakemake {path})")
    try:
        md = pq.read_schema(path).metadata or {}
    except (pa.ArrowInvalid, OSError) as e:
        raise ValueError(f"{path} is not a complete pairs.parquet ({e}); {rebuild}") from None
    ident = {k: json.loads(md[k.encode()]) for k in (*IDENTITY, "analysis") if k.encode() in md}
    missing = [k for k in IDENTITY if k not in ident]
    if missing:
        raise ValueError(f"{path} is not a pairs table of ours (its metadata lacks {', '.join(missing)}); {rebuild}")
    return ident


def load_pairs(paths: Iterable, columns: list[str] | None = None) -> pd.DataFrame:
    """Concatenate ``pairs.parquet`` files (optionally only ``columns``), adding
    ``run_seed`` (int32), ``temperature`` (float32, NaN for random-init) and
    ``policy`` (categorical) from each file's metadata."""
    frames, policies = [], []
    for path in paths:
        ident = read_identity(path)
        df = pd.read_parquet(path, columns=columns)
        df["run_seed"] = np.int32(ident["seed"])
        df["temperature"] = np.float32(np.nan if ident["temperature"] is None else ident["temperature"])
        frames.append(df)
        policies.append(ident["policy"])
    if not frames:
        raise ValueError("load_pairs: no files given")
    out = pd.concat(frames, ignore_index=True)
    categories = sorted(set(policies))
    codes = np.repeat([categories.index(p) for p in policies], [len(f) for f in frames])
    out["policy"] = pd.Categorical.from_codes(codes, categories)
    return out
