"""Section 4 analyses: percentiles, deciles, null model, image selection,
views, a planted structure the analysis must find, and a run end to end."""

import json

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch
from torch import nn

from negatives.analysis import pairs as A
from negatives.cli import main
from negatives.data import prepare
from negatives.evaluation.analyze import analyze_checkpoint
from negatives.training.pretrain import init_checkpoint

SETTINGS = dict(backbone="small-cnn", width=4, dim=8, bn_splits=2, knn_monitor=0, threads=1)


# ------------------------------------------------------------ percentiles


def test_percentiles_of_a_hand_made_matrix_with_ties():
    d = torch.tensor([[0.1, 0.5, -0.2, 0.9, 0.3], [0.4, 0.4, 0.4, 0.0, 0.4]])
    pct = A.percentile_ranks(d)
    assert pct.dtype == torch.float32
    assert pct.tolist() == [
        [20.0, 60.0, 0.0, 80.0, 40.0],
        [20.0, 40.0, 60.0, 0.0, 80.0],
    ]  # ties: lower index ranks as easier


def test_percentiles_are_a_permutation_below_100():
    d = torch.randn(37, 203)
    pct = A.percentile_ranks(d)
    expect = torch.arange(203, dtype=torch.float64).mul(100 / 203).float()
    assert torch.equal(pct.sort(dim=1).values, expect.expand(37, -1))
    assert pct.max() < 100 and pct.min() == 0
    # higher difficulty, higher percentile
    assert torch.equal(pct.argsort(dim=1), d.argsort(dim=1, stable=True))


@pytest.mark.parametrize("ties", [False, True])
def test_deciles_partition_each_querys_negatives(ties):
    g = torch.Generator().manual_seed(0)
    d = torch.randint(0, 4, (7, 250), generator=g).float() if ties else torch.randn(7, 250, generator=g)
    dec = A.deciles(A.percentile_ranks(d))
    assert dec.min() == 0 and dec.max() == 9
    for row in dec:
        assert torch.bincount(row, minlength=10).tolist() == [25] * 10


def test_hard_frequency_by_hand():
    pct = torch.tensor([[0.0, 20, 40, 60, 80], [80, 60, 40, 20, 0], [0, 20, 40, 60, 80]])
    assert torch.allclose(A.hard_frequency(pct, cut=80), torch.tensor([1 / 3, 0, 0, 0, 2 / 3]))
    assert torch.allclose(A.hard_frequency(pct, cut=60), torch.tensor([1 / 3, 1 / 3, 0, 2 / 3, 2 / 3]))
    # with 20 negatives, the hardest 5% is one per query: frequencies sum to 1
    assert A.hard_frequency(A.percentile_ranks(torch.randn(9, 20))).sum().item() == pytest.approx(1.0)


def test_null_model_keeps_each_querys_multiset_of_difficulties():
    d = torch.randn(50, 300)
    s = A.shuffle_within_queries(d, seed=3)
    assert torch.equal(s.sort(dim=1).values, d.sort(dim=1).values)
    assert (s != d).any(dim=1).all()  # every row reordered
    assert torch.equal(s, A.shuffle_within_queries(d, seed=3))
    assert not torch.equal(s, A.shuffle_within_queries(d, seed=4))
    # rows are permuted independently, not all by one permutation
    perm0 = (s[0][:, None] == d[0][None]).float().argmax(1)
    perm1 = (s[1][:, None] == d[1][None]).float().argmax(1)
    assert not torch.equal(perm0, perm1)


def test_null_model_flattens_consistently_hard_negatives():
    """Negatives hard for every query (Fig. 6's long tail) disappear under the null."""
    g = torch.Generator().manual_seed(0)
    d = torch.randn(400, 200, generator=g)
    d[:, :5] += 5.0  # 5 negatives hard for everyone
    freq = A.hard_frequency(A.percentile_ranks(d))
    null = A.hard_frequency(A.percentile_ranks(A.shuffle_within_queries(d, 0)))
    assert freq[:5].min() > 0.9 and freq[5:].max() < 0.2
    assert null.max() < 0.2 and null.mean() == pytest.approx(freq.mean())


def test_difficulty_is_cosine():
    q, n = torch.randn(4, 6), torch.randn(3, 6)
    expect = torch.nn.functional.cosine_similarity(q[:, None], n[None], dim=2)
    assert torch.allclose(A.difficulty(q, n), expect, atol=1e-6)
    assert A.difficulty(q, n).shape == (4, 3)


# ------------------------------------------------------------ selection


def test_select_images_disjoint_balanced_fixed():
    labels = np.arange(1000) % 10
    q, n = A.select_images(labels, 200, 300, seed=0)
    assert len(q) == 200 and len(n) == 300 and not set(q) & set(n)
    assert np.all(np.diff(q) > 0) and np.all(np.diff(n) > 0)
    assert np.bincount(labels[q]).tolist() == [20] * 10 and np.bincount(labels[n]).tolist() == [30] * 10
    q2, n2 = A.select_images(labels, 200, 300, seed=0)
    assert np.array_equal(q, q2) and np.array_equal(n, n2)
    q3, _ = A.select_images(labels, 200, 300, seed=1)
    assert not np.array_equal(q, q3)


def test_select_images_uneven_classes():
    labels = np.array([0] * 3 + [1] * 50 + [2] * 50)
    q, n = A.select_images(labels, 31, 40, seed=5)
    cq, cn = np.bincount(labels[q], minlength=3), np.bincount(labels[n], minlength=3)
    assert cq[0] == 3 and abs(cq[1] - cq[2]) <= 1  # the small class gives all it has
    assert cn[0] == 0 and abs(cn[1] - cn[2]) <= 1
    with pytest.raises(ValueError, match="queries"):
        A.select_images(labels, 60, 50, seed=0)


# ------------------------------------------------------------ views


class PlantedEncoder(nn.Module):
    """Flat images (std 0) map near e0, textured images to a random direction
    of their pooled pixels: flat images are one another's hardest negatives."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(16, 8)

    def forward(self, x):
        flat = torch.exp(-20 * x.flatten(1).std(dim=1, keepdim=True))
        pooled = nn.functional.adaptive_avg_pool2d(x, 4).flatten(1)
        return torch.cat([100 * flat, self.proj(pooled)], dim=1)


def _planted_images(n=400, seed=0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 10
    images = torch.randint(0, 256, (n, 1, 28, 28), generator=g, dtype=torch.uint8)
    images[labels == 3] = torch.randint(
        60, 200, (int((labels == 3).sum()), 1, 1, 1), generator=g, dtype=torch.uint8
    ).expand(-1, 1, 28, 28)
    return images, labels


def test_embed_views_normalised_reproducible_and_side_effect_free():
    torch.manual_seed(0)
    enc = PlantedEncoder().train()
    images, _ = _planted_images(40)
    state = torch.get_rng_state()
    z = A.embed_views(enc, images, [0.5], [0.25], seed=7, batch_size=16)
    assert torch.equal(torch.get_rng_state(), state)  # global RNG untouched
    assert enc.training  # mode restored
    assert z.shape == (40, 9) and z.dtype == torch.float32
    assert torch.allclose(z.norm(dim=1), torch.ones(40), atol=1e-5)
    assert torch.equal(z, A.embed_views(enc, images, [0.5], [0.25], seed=7, batch_size=16))
    assert not torch.allclose(z, A.embed_views(enc, images, [0.5], [0.25], seed=8, batch_size=16))


def test_planted_structure_is_found():
    """Negatives of class 3 are built to be hard for class-3 queries: the
    table must put them in the hardest 5% of those queries."""
    torch.manual_seed(0)
    enc = PlantedEncoder()
    images, labels = _planted_images(400)
    qi, ni = A.select_images(labels.numpy(), 100, 200, seed=0)
    z = A.embed_views(enc, images[torch.from_numpy(np.concatenate([qi, ni]))], [0.5], [0.25], seed=0)
    d = A.difficulty(z[:100], z[100:])
    sim = np.full((10, 10), 2)
    sim[3, 3] = 9
    t = A.pair_table(d, A.percentile_ranks(d), labels[qi], labels[ni], sim, qi, ni)
    q3 = t[t.query_label == 3]
    hard, easy = q3[q3.percentile >= 95], q3[q3.percentile < 95]
    assert len(hard) == 10 * 10 and len(easy) == 10 * 190  # 10 class-3 queries x 200 negatives
    assert hard.same_class.mean() == 1.0 and easy.same_class.mean() < 0.06
    assert hard.wordnet.mean() > easy.wordnet.mean() + 5
    others = t[t.query_label != 3]  # no structure planted there
    assert others[others.percentile >= 95].same_class.mean() < 0.5


def test_pair_table_columns_and_lookups():
    d = torch.tensor([[0.5, -0.5, 0.1], [0.2, 0.3, 0.4]])
    sim = np.arange(16).reshape(4, 4)
    t = A.pair_table(
        d,
        A.percentile_ranks(d),
        torch.tensor([1, 3]),
        np.array([3, 0, 1]),
        sim,
        np.array([10, 20]),
        np.array([5, 6, 7]),
    )
    assert {c: str(t[c].dtype) for c in t.columns} == A.COLUMNS
    assert t["query"].tolist() == [10, 10, 10, 20, 20, 20] and t["negative"].tolist() == [5, 6, 7] * 2
    assert t.same_class.tolist() == [False, False, True, True, False, False]
    assert t.wordnet.tolist() == [sim[1, 3], sim[1, 0], sim[1, 1], sim[3, 3], sim[3, 0], sim[3, 1]]
    assert t.percentile.tolist() == pytest.approx([200 / 3, 0, 100 / 3, 0, 100 / 3, 200 / 3])


# ------------------------------------------------------------ a run end to end


@pytest.fixture(scope="module")
def run(fashion_root, tmp_path_factory):
    root = tmp_path_factory.mktemp("analysis")
    data = prepare("fashion-mnist", fashion_root, root / "data")
    classes = torch.load(data, weights_only=False)["classes"]
    sim = root / "data" / "wordnet_similarity.tsv"  # a hand-made matrix: no WordNet needed here
    sim.write_text(
        "\t".join(["class", *classes])
        + "\n"
        + "".join("\t".join([c, *(str(i + j) for j in range(10))]) + "\n" for i, c in enumerate(classes))
    )
    ckpts = [init_checkpoint(data, "moco", s, SETTINGS, root / f"seed{s}") for s in (0, 1)]
    return root, data, sim, ckpts


def test_analyze_checkpoint_end_to_end(run, capsys):
    root, data, sim, (ckpt, _) = run
    settings = {"queries": 20, "negatives": 30, "seed": 0}
    out = analyze_checkpoint(ckpt, data, sim, settings, root / "seed0" / "analysis" / "pairs.parquet")
    assert capsys.readouterr().out.splitlines() == [  # what it is doing, a line per phase
        "embedding 20 queries and 30 negatives",
        f"ranking the 600 pairs and writing {out}",
    ]
    assert out.is_file() and not list(out.parent.glob("*.tmp"))  # no temporary file left
    t = pd.read_parquet(out)
    assert list(t.columns) == list(A.COLUMNS) and {c: str(t[c].dtype) for c in t.columns} == A.COLUMNS
    assert len(t) == 600 and t["query"].nunique() == 20 and t["negative"].nunique() == 30
    assert not set(t["query"]) & set(t["negative"])
    d = torch.load(data, weights_only=False)
    labels = d["train_labels"].numpy()
    assert (t.query_label == labels[t["query"]]).all() and (t.negative_label == labels[t["negative"]]).all()
    assert (t.same_class == (t.query_label == t.negative_label)).all()
    assert (t.wordnet == t.query_label + t.negative_label).all()
    assert t.difficulty.between(-1.0001, 1.0001).all()
    for _, g in t.groupby("query"):
        assert sorted(g.percentile.tolist()) == pytest.approx([100 * r / 30 for r in range(30)])
        assert g.sort_values("percentile").difficulty.is_monotonic_increasing
    ident = A.read_identity(out)
    assert ident == {
        "dataset": "fashion-mnist",
        "method": "moco",
        "policy": "random-init",
        "temperature": None,
        "seed": 0,
        "analysis": settings,
    }
    assert b"dataset" in pq.read_schema(out).metadata
    again = analyze_checkpoint(ckpt, data, sim, settings, root / "again.parquet")
    pd.testing.assert_frame_equal(pd.read_parquet(again), t)  # reproducible


def test_analyze_cli_and_load_pairs(run):
    root, data, sim, ckpts = run
    outs = []
    for s, ckpt in enumerate(ckpts):
        outs.append(root / f"seed{s}" / "cli.parquet")
        main(
            [
                "analyze",
                "--data",
                str(data),
                "--checkpoint",
                str(ckpt),
                "--similarity",
                str(sim),
                "--settings",
                json.dumps({"queries": 10, "negatives": 20}),
                "--out",
                str(outs[-1]),
            ]
        )
    df = A.load_pairs(outs)
    assert len(df) == 2 * 200 and df.run_seed.tolist() == [0] * 200 + [1] * 200
    assert df.temperature.isna().all() and df.policy.astype(str).eq("random-init").all()
    a, b = df[df.run_seed == 0], df[df.run_seed == 1]
    assert a["query"].tolist() == b["query"].tolist()  # every run sees the same images
    assert not np.allclose(a.difficulty.to_numpy(), b.difficulty.to_numpy())
    assert list(A.load_pairs(outs, columns=["percentile"]).columns) == [
        "percentile",
        "run_seed",
        "temperature",
        "policy",
    ]


def test_analyze_rejects_bad_settings_and_mismatched_classes(run, tmp_path):
    root, data, sim, (ckpt, _) = run
    with pytest.raises(ValueError, match=r"'querys' was unexpected\); allowed: .*queries"):
        analyze_checkpoint(ckpt, data, sim, {"querys": 5}, tmp_path / "x.parquet")
    bad = tmp_path / "sim.tsv"
    bad.write_text("class\ta\tb\na\t1\t0\nb\t0\t1\n")
    with pytest.raises(ValueError, match="classes"):
        analyze_checkpoint(ckpt, data, bad, {"queries": 5, "negatives": 5}, tmp_path / "x.parquet")
