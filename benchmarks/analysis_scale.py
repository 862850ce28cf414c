"""Scale of the Section 4 analysis: 10,000 queries x 10,000 negatives on CPU.

    python benchmarks/analysis_scale.py                   # 10,000 x 10,000, D = 128, 1000 classes
    python benchmarks/analysis_scale.py --queries 2000 --negatives 2000 --threads 2

What it measures (synthetic data; no encoder, no images): random unit
embeddings ``[Q, D]`` and ``[N, D]``, random labels over ``C`` classes and a
random integer ``[C, C]`` WordNet-depth matrix stand in for a run.  Timed, on
whole ``[Q, N]`` matrices with the functions of ``negatives.analysis``:

1. difficulty        cosine of every pair (``difficulty``)
2. percentiles       per-query ranks (``percentile_ranks``), then deciles
3. same class        ``[Q, N]`` bool from the labels
4. wordnet lookups   ``similarity[qlabel][:, nlabel]`` (array indexing, no tree walks)
5. summaries         Fig. 4 / 5: same-class fraction and mean WordNet depth in
                     the hardest 5% vs the easiest 95% and per decile; mean
                     difficulty per decile
6. hard frequency    Fig. 6: per negative, fraction of queries with it in the hardest 5%
7. null model        each query's percentiles shuffled (the same as shuffling its
                     difficulties and ranking again, without a second sort), hard frequency

The total of these stages is held against the target, 60 s on a
2-core CPU.  Not in the total (printed apart): building the tidy pandas table
of ``pairs.parquet`` at the configured 2,000 x 2,000 (a 100M-row table at
10,000 x 10,000 is not what the workflow writes), and, when WordNet is
installed, the real WordNet matrix of CIFAR-100 (``similarity_matrix``).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from negatives.analysis import pairs as A


class Timer:
    def __init__(self):
        self.rows: list[tuple[str, float]] = []

    def __call__(self, name, fn, *args):
        t = time.perf_counter()
        out = fn(*args)
        self.rows.append((name, time.perf_counter() - t))
        print(f"  {name:<50s} {self.rows[-1][1]:7.2f} s", flush=True)
        return out


def summaries(d, pct, same, wnet, cut=95.0, chunk=1024):
    """Fig. 4 (hardest 5% vs easiest 95%) and Fig. 5 (per decile): sums of
    (1, same class, WordNet depth, difficulty) per decile and over the hard
    negatives, accumulated over row chunks (no boolean indexing of [Q, N])."""
    by_decile, hard_sum = torch.zeros(4, 10, dtype=torch.float64), torch.zeros(4, dtype=torch.float64)
    for i in range(0, d.shape[0], chunk):
        p = pct[i : i + chunk]
        x = torch.stack([torch.ones_like(p), same[i : i + chunk].float(), wnet[i : i + chunk], d[i : i + chunk]])
        dec = A.deciles(p).expand_as(x)
        by_decile += torch.zeros(*x.shape[:2], 10).scatter_add_(2, dec, x).sum(1, dtype=torch.float64)
        hard_sum += (x * (p >= cut)).sum((1, 2), dtype=torch.float64)
    easy_sum = by_decile.sum(1) - hard_sum
    mean = by_decile[1:] / by_decile[0]
    return {
        "same_hard": float(hard_sum[1] / hard_sum[0]),
        "same_easy": float(easy_sum[1] / easy_sum[0]),
        "wordnet_hard": float(hard_sum[2] / hard_sum[0]),
        "wordnet_easy": float(easy_sum[2] / easy_sum[0]),
        "same_by_decile": mean[0].tolist(),
        "wordnet_by_decile": mean[1].tolist(),
        "difficulty_by_decile": mean[2].tolist(),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--queries", type=int, default=10_000)
    p.add_argument("--negatives", type=int, default=10_000)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--classes", type=int, default=1000)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--table", type=int, default=2000, help="side of the tidy table timed apart (0: skip)")
    p.add_argument("--target", type=float, default=60.0)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    q = torch.nn.functional.normalize(torch.randn(args.queries, args.dim, generator=g), dim=1)
    n = torch.nn.functional.normalize(torch.randn(args.negatives, args.dim, generator=g), dim=1)
    ql = torch.randint(0, args.classes, (args.queries,), generator=g)
    nl = torch.randint(0, args.classes, (args.negatives,), generator=g)
    sim = torch.randint(0, 18, (args.classes, args.classes), generator=g)
    sim = torch.maximum(sim, sim.T).float()
    print(
        f"{args.queries} queries x {args.negatives} negatives, D={args.dim}, {args.classes} classes, "
        f"{torch.get_num_threads()} threads"
    )

    t = Timer()
    d = t("1 difficulty (cosine)", A.difficulty, q, n)
    pct = t("2 percentiles", A.percentile_ranks, d)
    t("2 deciles", A.deciles, pct)
    same = t("3 same class", lambda: ql[:, None] == nl[None, :])
    wnet = t("4 wordnet lookups (array indexing)", lambda: sim[ql][:, nl])
    s = t("5 summaries (Fig. 4, Fig. 5)", summaries, d, pct, same, wnet)
    freq = t("6 hard frequency (Fig. 6)", A.hard_frequency, pct)
    null = t(
        "7 null model: shuffle percentiles + hard frequency", lambda: A.hard_frequency(A.shuffle_within_queries(pct, 0))
    )
    total = sum(sec for _, sec in t.rows)
    print(f"  {'total':<50s} {total:7.2f} s   target {args.target:.0f} s: {'PASS' if total < args.target else 'FAIL'}")
    print(
        f"  check: hard same-class {s['same_hard']:.4f} vs easy {s['same_easy']:.4f} (random data: equal); "
        f"hard frequency mean {freq.mean():.4f}, null mean {null.mean():.4f} (both 0.05)"
    )

    print("apart from the total:")
    if args.table:
        k = args.table
        t(
            f"tidy table, pair_table at {k} x {k}",
            A.pair_table,
            d[:k, :k],
            pct[:k, :k],
            ql[:k],
            nl[:k],
            sim.numpy(),
            np.arange(k),
            np.arange(k, 2 * k),
        )
    try:
        from negatives.data import class_map
        from negatives.data.similarity import similarity_matrix
        from negatives.data.wordnet import load_wordnet

        wn = t("load WordNet (NLTK reader)", load_wordnet)
        t("WordNet matrix of CIFAR-100 (100 x 100)", similarity_matrix, [s for _, _, s in class_map("cifar100")], wn)
    except Exception as e:  # WordNet not installed: the synthetic matrix above stands in
        print(f"  WordNet matrix skipped ({type(e).__name__}: {e})")


if __name__ == "__main__":
    main()
