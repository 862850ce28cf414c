import json
import math

import pytest
import torch
from conftest import written as outputs_in

from negatives.data.augment import Normalize
from negatives.data.sources import data_digest, load_prepared
from negatives.evaluation import probes
from negatives.evaluation.probes import FEWSHOT_DRAWS, evaluate_checkpoint, fewshot_indices, linear_probe
from negatives.features import extract_features, knn_classify, topk_accuracy
from negatives.models import build_encoder

# kNN by hand: four unit train vectors, one query at 36.87 degrees
TRAIN = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0], [-1.0, 0.0]])
TRAIN_Y = torch.tensor([0, 1, 1, 0])
QUERY = torch.tensor([[0.8, 0.6]])  # cosines: 0.8 (c0), 0.96 (c1), 0.6 (c1), -0.8 (c0)


def test_knn_exact_scores_k3():
    # the vote exp(sim / t), each row divided by exp(top / t): top = 0.96
    s = knn_classify(TRAIN, TRAIN_Y, QUERY, num_classes=2, k=3, temperature=0.1)
    expected = torch.tensor([[math.exp(8.0 - 9.6), 1.0 + math.exp(6.0 - 9.6)]], dtype=torch.float64)
    torch.testing.assert_close(s, expected, rtol=1e-5, atol=0)


def test_knn_normalises_features_and_clamps_k():
    # features scaled arbitrarily: cosine, not dot product; k=200 > N=4 -> all four vote
    s = knn_classify(TRAIN * torch.tensor([[3.0], [0.5], [2.0], [7.0]]), TRAIN_Y, QUERY * 5, 3, k=200, temperature=0.1)
    expected = torch.tensor(
        [[math.exp(8.0 - 9.6) + math.exp(-8.0 - 9.6), 1.0 + math.exp(6.0 - 9.6), 0.0]], dtype=torch.float64
    )
    torch.testing.assert_close(s, expected, rtol=1e-5, atol=0)


def test_knn_k1_is_nearest_neighbour_and_chunking():
    torch.manual_seed(0)
    train, test = torch.randn(50, 8), torch.randn(37, 8)
    y = torch.randint(0, 4, (50,))
    s = knn_classify(train, y, test, 4, k=1, temperature=0.5, chunk=5)
    nn_idx = (torch.nn.functional.normalize(test, dim=1) @ torch.nn.functional.normalize(train, dim=1).T).argmax(1)
    assert torch.equal(s.argmax(1), y[nn_idx])
    torch.testing.assert_close(s, knn_classify(train, y, test, 4, k=1, temperature=0.5, chunk=1000))


def test_topk_accuracy_exact():
    scores = torch.tensor(
        [
            [9.0, 1, 2, 3, 4, 5],  # label 0: rank 1
            [1.0, 2, 3, 4, 5, 9],  # label 4: rank 2
            [6.0, 5, 4, 3, 2, 1],  # label 5: rank 6 (last)
            [1.0, 2, 3, 4, 5, 6],  # label 1: rank 5
        ]
    )
    labels = torch.tensor([0, 4, 5, 1])
    assert topk_accuracy(scores, labels) == {1: 25.0, 5: 75.0}
    assert topk_accuracy(scores, labels, ks=(1, 2, 6)) == {1: 25.0, 2: 50.0, 6: None}
    # five classes or fewer: no top-5
    assert topk_accuracy(scores[:, :5], torch.tensor([0, 4, 0, 1]))[5] is None


def _blobs(n_per_class, dim=8, classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    centres = 10.0 * torch.eye(classes, dim)
    y = torch.arange(classes).repeat_interleave(n_per_class)
    x = centres[y] + torch.randn(len(y), dim, generator=g)
    return x * torch.linspace(0.01, 100, dim) + 50.0, y  # badly scaled and shifted: needs standardising


def test_linear_probe_separable_and_deterministic():
    x, y = _blobs(100)
    xt, yt = _blobs(40, seed=1)
    s = linear_probe(x, y, xt, 3, seed=0)
    assert s.shape == (120, 3)
    assert topk_accuracy(s, yt, ks=(1,))[1] == 100.0
    assert torch.equal(s, linear_probe(x, y, xt, 3, seed=0))


def test_linear_probe_standardises_features():
    # standardising with the train mean / std makes the probe blind to a per-feature affine map
    x, y = _blobs(30, seed=2)
    x = x + 200.0 * torch.randn(x.shape, generator=torch.Generator().manual_seed(5))  # overlapping classes
    xt, _ = _blobs(10, seed=3)
    a, b = torch.linspace(0.1, 10, 8), torch.linspace(-100, 100, 8)
    s = linear_probe(x, y, xt, 3, seed=0)
    torch.testing.assert_close(linear_probe(x * a + b, y, xt * a + b, 3, seed=0), s, rtol=1e-3, atol=1e-3)


def test_fewshot_indices_balanced_deterministic():
    labels = torch.tensor([0] * 10 + [1] * 7 + [2] * 5)[torch.randperm(22, generator=torch.Generator().manual_seed(3))]
    idx = fewshot_indices(labels, 4, seed=0)
    assert idx.dtype == torch.int64 and len(idx) == 12 and len(set(idx.tolist())) == 12
    assert torch.bincount(labels[idx]).tolist() == [4, 4, 4]
    assert torch.equal(idx, fewshot_indices(labels, 4, seed=0))
    assert any(not torch.equal(idx, fewshot_indices(labels, 4, seed=s)) for s in range(1, 5))
    with pytest.raises(ValueError, match="class 2 has only 5"):
        fewshot_indices(labels, 6, seed=0)
    with pytest.raises(ValueError, match="class 3 has only 0"):
        fewshot_indices(labels, 2, seed=0, num_classes=4)


def test_extract_features_shape_eval_mode_batching():
    torch.manual_seed(0)
    enc = build_encoder("small-cnn", 1, dim=8, width=4)
    enc(torch.randn(16, 1, 12, 12))  # move the batch-norm running statistics away from their init
    enc.train()
    imgs = torch.randint(0, 256, (10, 1, 12, 12), dtype=torch.uint8)
    f = extract_features(enc, imgs, [0.5], [0.25], batch_size=3)
    assert f.shape == (10, 16) and f.dtype == torch.float32
    assert enc.training  # mode restored
    enc.eval()
    with torch.no_grad():
        ref = enc.represent(Normalize([0.5], [0.25])(imgs))
    torch.testing.assert_close(f, ref)


def test_evaluate_checkpoint_writes_probe_json(tmp_path, monkeypatch, capsys):
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    ytr, yte = torch.arange(6).repeat(12), torch.arange(6).repeat(4)

    # class c is a bright square at a class-specific place: easy for any encoder
    def images(y):
        x = torch.randint(0, 40, (len(y), 1, 12, 12), generator=g, dtype=torch.uint8)
        for i, c in enumerate(y.tolist()):
            x[i, 0, 2 * c : 2 * c + 2, :] = 255
        return x

    data = dict(
        train_images=images(ytr),
        train_labels=ytr,
        test_images=images(yte),
        test_labels=yte,
        classes=[f"c{i}" for i in range(6)],
        mean=[0.2],
        std=[0.3],
        dataset="toy",
    )
    torch.save(data, tmp_path / "data.pt")
    meta = dict(
        dataset="toy",
        method="moco",
        policy="keep[95_100)",
        temperature=0.2,
        seed=1,
        uses_labels=False,
        epochs=3,
        settings={},
        in_channels=1,
    )
    enc = build_encoder("small-cnn", 1, dim=8, width=4)
    monkeypatch.setattr(probes, "load_encoder", lambda path: (enc, meta))
    settings = dict(probe="fast", knn_k=72, knn_temperature=0.1, fewshot_labels_per_class=2, threads=1)  # every image
    out = tmp_path / "run" / "probe.json"
    res = evaluate_checkpoint("ckpt.pt", tmp_path / "data.pt", settings, out)
    assert capsys.readouterr().out.splitlines() == [  # what it is doing, a line per phase
        "embedding 72 training and 24 test images",
        "fitting the fast linear probe",
        f"fitting {FEWSHOT_DRAWS} few-label probes (2 labels per class)",
        "kNN classification of 24 test images",
    ]
    written = json.loads(out.read_text())
    assert written == res
    assert list(written) == [
        "dataset",
        "method",
        "policy",
        "temperature",
        "seed",
        "uses_labels",
        "epochs",
        "train_images_per_s",
        "linear_top1",
        "linear_top5",
        "fewshot_top1",
        "fewshot_top5",
        "fewshot_labels_per_class",
        "fewshot_draws",
        "knn_top1",
        "knn_top5",
        "evaluation",
        "ran_with",
        "versions",
    ]
    assert (
        written["evaluation"]
        == {**probes.evaluation_record(settings), "data": data_digest(load_prepared(tmp_path / "data.pt"))}
        == {
            "probe": "fast",
            "knn_k": settings["knn_k"],
            "knn_temperature": 0.1,
            "fewshot_labels_per_class": 2,
            "fewshot_draws": FEWSHOT_DRAWS,
            "data": written["evaluation"]["data"],
        }
    )
    assert set(written["evaluation"]["data"]) == {"train", "test"}
    assert written["ran_with"] == {"device": "cpu", "threads": 1}
    assert set(written["versions"]) == {"negatives", "torch", "torchvision", "python"}
    assert written["policy"] == "keep[95_100)" and written["seed"] == 1 and written["fewshot_draws"] == FEWSHOT_DRAWS
    for k in ("linear_top1", "linear_top5", "fewshot_top1", "fewshot_top5", "knn_top1", "knn_top5"):
        assert 0.0 <= written[k] <= 100.0
    assert written["linear_top5"] >= written["linear_top1"]
    assert outputs_in(out.parent) == ["probe.json"]  # no temp file left behind

    with pytest.raises(ValueError, match="evaluate.probe"):
        evaluate_checkpoint("ckpt.pt", tmp_path / "data.pt", {**settings, "probe": "paper"}, out)
    with pytest.raises(ValueError, match="'knn_kk' was unexpected.*allowed: .*knn_k"):
        evaluate_checkpoint("ckpt.pt", tmp_path / "data.pt", {**settings, "knn_kk": 3}, out)
    with pytest.raises(ValueError, match=r"evaluate\.knn_k: 200 neighbours, but .*data\.pt holds 72 training images"):
        evaluate_checkpoint("ckpt.pt", tmp_path / "data.pt", {**settings, "knn_k": 200}, out)  # the default
    # a key left out takes the schema's default, as in the workflow
    out.unlink()
    partial = evaluate_checkpoint(
        "ckpt.pt", tmp_path / "data.pt", {"fewshot_labels_per_class": 2, "threads": 1, "knn_k": 72}, out
    )
    assert partial["knn_top1"] == res["knn_top1"] and partial["linear_top1"] == res["linear_top1"]
