"""Section 4 during training (``python -m negatives dynamics``): each measure
by hand on tiny embeddings, the same disjoint images for every run and epoch,
a complete table of a real run's saved epochs, and the final checkpoint as the
last epoch of a run without snapshots."""

from __future__ import annotations

import math
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from negatives.analysis import pairs as A
from negatives.cli import main
from negatives.data import prepare
from negatives.evaluation import analyze
from negatives.evaluation import dynamics as D
from negatives.training.pretrain import pretrain
from negatives.training.snapshots import SNAPSHOTS

SETTINGS = dict(
    backbone="small-cnn", width=4, dim=8, epochs=3, batch_size=16, queue_size=32, bn_splits=2, knn_monitor=0, threads=1
)
ANALYSIS = {"dynamics_queries": 20, "dynamics_negatives": 40, "seed": 0}

# ------------------------------------------------------------ by hand


def test_decile_means_by_hand():
    d = torch.arange(20.0).reshape(1, 20) / 20  # one query, 20 negatives: two a decile, in order
    got = D.decile_means(d, A.percentile_ranks(d))
    assert got.tolist() == pytest.approx([(2 * i + 0.5) / 20 for i in range(10)])
    d = torch.tensor([[0.9, 0.1, 0.5, 0.3, 0.7, 0.2, 0.4, 0.6, 0.8, 0.0]])  # one a decile, out of order
    assert D.decile_means(d, A.percentile_ranks(d)).tolist() == pytest.approx([i / 10 for i in range(10)])
    assert math.isnan(D.decile_means(torch.zeros(1, 2), torch.tensor([[0.0, 50.0]]))[1])  # an empty decile


def test_masked_mean_by_hand():
    v = torch.tensor([[1.0, 2.0], [3.0, 6.0]])
    assert D.masked_mean(v, torch.tensor([[True, False], [False, True]])) == 3.5
    assert math.isnan(D.masked_mean(v, torch.zeros(2, 2, dtype=torch.bool)))


def test_hard_spread_by_hand():
    pct = torch.tensor([[0.0, 25.0, 50.0, 75.0], [75.0, 0.0, 25.0, 50.0]])
    # hard (>= 75) for half the queries: negatives 0 and 3; never: 1 and 2 -> 50, 0, 0, 50 % of queries
    assert D.hard_spread(pct, cut=75.0) == pytest.approx(25.0)
    assert D.hard_spread(torch.tensor([[75.0, 0.0], [75.0, 0.0]]), cut=75.0) == pytest.approx(50.0)


def test_dynamics_point_by_hand():
    """Two queries, 20 negatives on the unit circle: the hardest 5% is the one
    closest negative of each query, the easiest 5% the one farthest."""
    angles = torch.linspace(0, math.pi, 20)
    zn = torch.stack([angles.cos(), angles.sin()], dim=1)
    zq = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])  # query 0 nearest negative 0, query 1 nearest negative 19
    nl = np.array([0] * 10 + [1] * 10)
    ql = np.array([0, 1])
    sim = np.array([[4.0, 1.0], [1.0, 4.0]])
    p = D.dynamics_point(zq, zn, ql, nl, sim, null_seed=3)
    assert p["same_class_hardest_5"] == 1.0  # negative 0 (class 0) for query 0, negative 19 (class 1) for query 1
    assert p["same_class_easiest_5"] == 0.0  # the farthest: negative 19 for query 0, negative 0 for query 1
    # the other 19 of each query: 9 of its class (similarity 4), 10 of the other (1)
    assert p["wordnet_hardest_5"] == 4.0 and p["wordnet_easiest_95"] == pytest.approx(2 * (9 * 4 + 10) / 38)
    d = zq @ zn.T
    assert [p[f"cosine_decile_{i}"] for i in range(10)] == pytest.approx(
        torch.sort(d, dim=1).values.reshape(2, 10, 2).mean(dim=(0, 2)).tolist(), abs=1e-6
    )
    assert p["hard_spread"] == pytest.approx(float(torch.tensor([50.0, *[0.0] * 18, 50.0]).std(unbiased=False)))
    null = A.percentile_ranks(A.shuffle_within_queries(d, 3))
    assert p["hard_spread_null"] == pytest.approx(D.hard_spread(null))


def test_the_spreads_of_fig6_by_hand_and_the_null_seeded():
    """Eight queries, 40 negatives: the hardest 5% of a query are its two
    closest negatives; the null shuffles each query's cosines (seeded)."""
    g = torch.Generator().manual_seed(0)
    zq, zn = torch.randn(8, 4, generator=g), torch.randn(40, 4, generator=g)
    p = D.dynamics_point(zq, zn, np.zeros(8), np.zeros(40), np.ones((1, 1)), null_seed=3)
    top2 = (F.normalize(zq, dim=1) @ F.normalize(zn, dim=1).T).topk(2, dim=1).indices.reshape(-1)
    share = torch.bincount(top2, minlength=40).double() * 100 / 8  # % of queries for which each is hard
    assert p["hard_spread"] == pytest.approx(float(((share - share.mean()) ** 2).mean().sqrt()))
    d = A.difficulty(zq, zn)
    null = [D.hard_spread(A.percentile_ranks(A.shuffle_within_queries(d, seed))) for seed in (3, 4)]
    assert p["hard_spread_null"] == pytest.approx(null[0]) and null[0] != pytest.approx(null[1])


# ------------------------------------------------------------ a real run


@pytest.fixture(scope="module")
def run(fashion_root, tmp_path_factory):
    root = tmp_path_factory.mktemp("dynamics")
    data = prepare("fashion-mnist", fashion_root, root / "data")
    classes = torch.load(data, weights_only=False)["classes"]
    sim = root / "data" / "wordnet_similarity.tsv"  # a hand-made matrix: no WordNet needed here
    sim.write_text(
        "\t".join(["class", *classes])
        + "\n"
        + "".join("\t".join([c, *(str(i + j) for j in range(10))]) + "\n" for i, c in enumerate(classes))
    )
    settings = {**SETTINGS, "dynamics_epochs": [1, 3]}
    ckpts = [pretrain(data, "moco", "all", 0.2, s, settings, root / f"seed{s}", log=lambda m: None) for s in (0, 1)]
    return root, data, sim, ckpts


def test_every_saved_epoch_gives_a_complete_row(run):
    root, data, sim, (ckpt, _) = run
    said = []
    out = D.dynamics_of_run(ckpt, data, sim, ANALYSIS, root / "seed0" / "analysis" / "dynamics.csv", log=said.append)
    t = pd.read_csv(out)
    assert t.epoch.tolist() == [1, 3] and not said
    assert not t.isna().any().any()
    assert t[["dataset", "method", "policy", "temperature", "seed"]].iloc[0].tolist() == [
        "fashion-mnist",
        "moco",
        "all",
        0.2,
        0,
    ]
    assert t.filter(like="cosine_decile").apply(lambda r: r.is_monotonic_increasing, axis=1).all()
    assert t.filter(like="same_class").stack().between(0, 1).all()
    again = D.dynamics_of_run(ckpt, data, sim, ANALYSIS, root / "again.csv")
    pd.testing.assert_frame_equal(pd.read_csv(again), t)  # the saved weights alone make the numbers


def test_a_run_without_snapshots_gets_its_last_epoch_from_the_checkpoint(run, tmp_path):
    root, data, sim, (ckpt, _) = run
    old = tmp_path / "old"
    shutil.copytree(ckpt.parent, old, ignore=shutil.ignore_patterns(SNAPSHOTS, "analysis"))
    said = []
    t = pd.read_csv(D.dynamics_of_run(old / "checkpoint.pt", data, sim, ANALYSIS, old / "d.csv", log=said.append))
    full = pd.read_csv(D.dynamics_of_run(ckpt, data, sim, ANALYSIS, tmp_path / "full.csv"))
    assert t.epoch.tolist() == [3]
    pd.testing.assert_frame_equal(t, full[full.epoch == 3].reset_index(drop=True))  # the same encoder, the same row
    assert len(said) == 1 and "no snapshot of epochs [1]" in said[0]


def test_the_images_are_the_same_disjoint_subset_for_every_run_and_epoch(run, tmp_path, monkeypatch):
    root, data, sim, ckpts = run
    chosen, embedded = [], []
    select, embed = analyze.select_images, analyze.embed_views  # the analysis's own choice and embedding of the images

    def spy_select(*args):
        chosen.append(select(*args))
        return chosen[-1]

    def spy_embed(encoder, images, *args):
        assert not encoder.training
        embedded.append(images.clone())
        return embed(encoder, images, *args)

    monkeypatch.setattr(analyze, "select_images", spy_select)
    monkeypatch.setattr(analyze, "embed_views", spy_embed)
    for s, ckpt in enumerate(ckpts):
        D.dynamics_of_run(ckpt, data, sim, ANALYSIS, tmp_path / f"{s}.csv")
    (q0, n0), (q1, n1) = chosen
    assert len(q0) == 20 and len(n0) == 40 and not set(q0) & set(n0)
    assert np.array_equal(q0, q1) and np.array_equal(n0, n1)
    assert len(embedded) == 4 and all(torch.equal(e, embedded[0]) for e in embedded)


def test_the_cli_writes_the_table(run, tmp_path):
    root, data, sim, (_, ckpt) = run
    out = tmp_path / "dynamics.csv"
    args = ["dynamics", "--data", str(data), "--checkpoint", str(ckpt), "--similarity", str(sim)]
    assert main([*args, "--settings", '{"dynamics_queries": 20, "dynamics_negatives": 40}', "--out", str(out)]) == 0
    assert pd.read_csv(out).seed.tolist() == [1, 1]
    assert main([*args, "--settings", '{"dynamics_queries": 0}', "--out", str(out)]) == 2  # one line, no traceback


def test_a_damaged_snapshot_is_named_with_what_to_do(run, tmp_path):
    root, data, sim, (ckpt, _) = run
    copy = tmp_path / "run"
    shutil.copytree(ckpt.parent, copy, ignore=shutil.ignore_patterns("analysis"))
    snap = copy / SNAPSHOTS / "epoch0001.pt"
    snap.write_bytes(snap.read_bytes()[:-10])
    with pytest.raises(ValueError, match=r"^snapshot of epoch 1: .*epoch0001\.pt is damaged.*delete .*epoch0001\.pt"):
        D.dynamics_of_run(copy / "checkpoint.pt", data, sim, ANALYSIS, copy / "d.csv")
