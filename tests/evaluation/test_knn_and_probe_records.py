"""The kNN vote stays exact at every temperature the schema allows, probe.json
records how it was evaluated, and the figures refuse probes evaluated
differently or lacking a metric."""

import json
import math
import sys

import pytest
import torch
import yaml
from conftest import ROOT

from negatives.analysis.plotting import load_probes
from negatives.cli import main
from negatives.config import ConfigError, check_section
from negatives.evaluation.probes import FEWSHOT_DRAWS, evaluation_record
from negatives.features import KNN_MIN_TEMPERATURE, knn_classify

TEMPERATURES = [1.0, 0.5, 0.2, 0.1, 0.07, 0.05, 0.02, 0.01, KNN_MIN_TEMPERATURE]


def reference_votes(train, labels, test, num_classes, k, t):
    """The vote as written in InstDisc, in float64: for each query the k
    most similar train rows (cosine) add exp(sim / t) to their class."""
    bank = train.double() / train.double().norm(dim=1, keepdim=True)
    queries = test.double() / test.double().norm(dim=1, keepdim=True)
    votes = torch.zeros(len(queries), num_classes, dtype=torch.float64)
    for i, q in enumerate(queries):
        sim = bank @ q
        for j in sim.argsort(descending=True)[:k].tolist():
            votes[i, labels[j]] += math.exp(sim[j].item() / t)
    return votes


# ------------------------------------------------------------------ the kNN vote


def test_the_schema_bound_is_where_every_float64_weight_is_exact():
    # the smallest weight, exp((-1 - 1) / t), is a normal float64 down to the bound ...
    assert math.exp(-2 / KNN_MIN_TEMPERATURE) >= sys.float_info.min
    # ... where the vote as written, exp(sim / t), is inf in float32
    assert torch.tensor(1.0 / KNN_MIN_TEMPERATURE).exp().isinf()
    check_section("evaluate", {"knn_temperature": KNN_MIN_TEMPERATURE})
    with pytest.raises(ConfigError, match="knn_temperature: 0.004 is less than the minimum of 0.005"):
        check_section("evaluate", {"knn_temperature": 0.004})


@pytest.mark.parametrize("t", [0.1, KNN_MIN_TEMPERATURE])
def test_knn_hand_example_is_exact(t):
    # cosines exact in float32: the queries' similarities are 1, 0, -1
    train = torch.tensor([[2.0, 0.0], [0.0, 1.0], [0.0, -3.0], [-1.0, 0.0], [1.0, 0.0]])
    labels = torch.tensor([0, 1, 1, 2, 0])
    queries = torch.tensor([[5.0, 0.0], [0.0, -1.0]])
    e1, e2 = math.exp(-1 / t), math.exp(-2 / t)  # each vote divided by exp(top / t), top = 1
    expected = torch.tensor(
        [
            [2.0, 2 * e1, e2],  # sims 1, 0, 0, -1, 1
            [2 * e1, 1.0 + e2, e1],
        ],  # sims 0, -1, 1, 0, 0
        dtype=torch.float64,
    )
    scores = knn_classify(train, labels, queries, 3, k=5, temperature=t)
    assert scores.dtype == torch.float64 and torch.isfinite(scores).all() and (scores > 0).all()
    torch.testing.assert_close(scores, expected, rtol=1e-14, atol=0)
    # k = 4 leaves out the least similar train row of each query (-1)
    torch.testing.assert_close(
        knn_classify(train, labels, queries, 3, k=4, temperature=t),
        expected * torch.tensor([[1.0, 1, 0], [1, 0, 1]]) + torch.tensor([[0, 0, 0], [0, 1, 0]]),
        rtol=1e-14,
        atol=0,
    )


def _random_features():
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(7, 32, generator=g)
    labels = torch.randint(0, 7, (300,), generator=g)
    train = centres[labels] + 1.5 * torch.randn(300, 32, generator=g)
    test = torch.cat(
        [centres[torch.randint(0, 7, (40,), generator=g)] + 1.5 * torch.randn(40, 32, generator=g), train[:10] * 3.0]
    )  # ten queries at a train image: a similarity of 1, exp(1 / t) as written
    return train, labels, test


@pytest.mark.parametrize("t", TEMPERATURES)
def test_knn_matches_a_float64_reference_down_to_the_schema_bound(t):
    train, labels, test = _random_features()
    for k in (20, 300):
        ref = reference_votes(train, labels, test, 7, k, t)
        scores = knn_classify(train, labels, test, 7, k=k, temperature=t, chunk=16).double()
        assert torch.isfinite(scores).all()
        # each class's share of the vote; the float32 similarities (about 1e-7 off)
        # set the tolerance: 1e-7 / t relative on each weight
        torch.testing.assert_close(
            scores / scores.sum(1, keepdim=True), ref / ref.sum(1, keepdim=True), rtol=4e-6 / t, atol=0
        )
        assert torch.equal(scores.argmax(1), ref.argmax(1))


@pytest.mark.parametrize("t", [1.0, 0.1, KNN_MIN_TEMPERATURE])
def test_knn_scores_are_the_vote_divided_by_exp_of_each_rows_top_similarity(t):
    train, labels, test = _random_features()
    ref = reference_votes(train, labels, test, 7, 20, t)
    top = (
        torch.nn.functional.normalize(test.double(), dim=1) @ torch.nn.functional.normalize(train.double(), dim=1).T
    ).amax(1, keepdim=True)
    torch.testing.assert_close(
        knn_classify(train, labels, test, 7, k=20, temperature=t), ref * torch.exp(-top / t), rtol=2e-6 / t, atol=0
    )


def test_the_training_monitor_votes_with_the_same_function():
    from negatives import features
    from negatives.evaluation import probes
    from negatives.training import monitor

    assert monitor.knn_classify is probes.knn_classify is features.knn_classify


# ------------------------------------------------------------------ probe.json's record


def test_the_evaluation_record_holds_what_changes_the_numbers_only():
    fast = evaluation_record(
        {
            "knn_k": 50,
            "knn_temperature": 1,
            "threads": 8,
            "device": "cpu",
            "faithful": {"epochs": 3, "milestones": [1, 2]},
        }
    )
    assert fast == {
        "probe": "fast",
        "knn_k": 50,
        "knn_temperature": 1.0,
        "fewshot_labels_per_class": 10,
        "fewshot_draws": FEWSHOT_DRAWS,
    }
    faithful = evaluation_record({"probe": "faithful", "faithful": {"epochs": 3, "milestones": [1, 2]}})
    assert faithful["probe"] == "faithful" and faithful["faithful"]["epochs"] == 3
    assert faithful["faithful"]["lr"] == 30.0 and faithful["faithful"]["gamma"] == 0.1  # defaults filled in
    assert (
        evaluation_record({"probe": "faithful"})["faithful"]
        == evaluation_record({"probe": "faithful", "faithful": {"lr": 30.0}})["faithful"]
    )  # a default said or left out: one setting


# ------------------------------------------------------------------ figures refuse what they cannot compare


def _probe(policy="all", seed=0, **evaluation):
    record = {
        "probe": "fast",
        "knn_k": 200,
        "knn_temperature": 0.1,
        "fewshot_labels_per_class": 10,
        "fewshot_draws": 5,
        **evaluation,
    }
    p = {
        "dataset": "fashion-mnist",
        "method": "moco",
        "policy": policy,
        "temperature": 0.2,
        "seed": seed,
        "uses_labels": False,
        "epochs": 20,
        "train_images_per_s": 1000.0,
        "fewshot_labels_per_class": record["fewshot_labels_per_class"],
        "fewshot_draws": 5,
        "evaluation": record,
        "ran_with": {"device": "cpu", "threads": 1 + seed},
        "versions": {"negatives": None, "torch": f"2.{seed}", "torchvision": None, "python": "3.11"},
    }
    p.update({f"{e}_{k}": 50.0 + seed for e in ("linear", "fewshot", "knn") for k in ("top1", "top5")})
    return p


def _write(folder, name, probe):
    path = folder / name
    path.write_text(json.dumps(probe))
    return path


def _figure(name, paths, out):
    cfg = yaml.safe_load((ROOT / "config.yaml").read_text())
    return main(["figure", name, "--probes", *map(str, paths), "--config-json", json.dumps(cfg), "--out", str(out)])


def test_probes_evaluated_alike_load_and_their_records_stay_out_of_the_table(tmp_path):
    paths = [_write(tmp_path, f"{s}.json", _probe(seed=s)) for s in range(2)]  # ran_with, versions differ
    df = load_probes(paths)
    assert len(df) == 2 and not {"evaluation", "ran_with", "versions"} & set(df.columns)


def _rest(probe, key):
    return {k: v for k, v in probe.items() if k != key}


REFUSED = [  # (id, the second probe, the message; the first is _probe())
    (
        "another kNN temperature",
        _probe(seed=1, knn_temperature=0.05),
        "were evaluated differently (evaluation.knn_temperature: 0.1 vs 0.05)",
    ),
    ("another k", _probe(seed=1, knn_k=20), "(evaluation.knn_k: 200 vs 20)"),
    ("another few-label count", _probe(seed=1, fewshot_labels_per_class=5), "(evaluation.fewshot_labels_per_class:"),
    (
        "another linear probe",
        _probe(seed=1, probe="faithful", faithful={"epochs": 100}),
        '(evaluation.probe: "fast" vs "faithful")',
    ),
    (
        "a probe.json without its record",
        _rest(_probe(seed=1), "evaluation"),
        "does not record how it was evaluated (no 'evaluation'",
    ),
    ("a probe.json without a metric", _rest(_probe(seed=1), "knn_top5"), "lacks the metric knn_top5"),
    (
        "a probe.json without the top-1 of its linear probe",
        _rest(_probe(seed=1), "linear_top1"),
        "lacks the metric linear_top1",
    ),
]


@pytest.mark.parametrize("second, message", [r[1:] for r in REFUSED], ids=[r[0] for r in REFUSED])
def test_a_figure_refuses_probes_it_cannot_compare_and_writes_nothing(tmp_path, capsys, second, message):
    first = _write(tmp_path, "a.json", _probe())
    other = _write(tmp_path, "b.json", second)
    before = {p: p.read_bytes() for p in tmp_path.iterdir()}
    status = _figure("fig2", [first, other], tmp_path / "figures" / "fig2")
    err = capsys.readouterr().err.strip()
    assert status == 2 and len(err.splitlines()) == 1 and message in err, err
    assert str(other) in err and ("evaluated differently" not in message or str(first) in err), err
    assert "Traceback" not in err
    assert {p: p.read_bytes() for p in tmp_path.iterdir()} == before and not (tmp_path / "figures").exists()


def test_two_faithful_probes_with_different_settings_are_refused(tmp_path, capsys):
    paths = [
        _write(tmp_path, "a.json", _probe(probe="faithful", faithful={"epochs": 100, "lr": 30.0})),
        _write(tmp_path, "b.json", _probe(seed=1, probe="faithful", faithful={"epochs": 100, "lr": 10.0})),
    ]
    assert _figure("table1", paths, tmp_path / "figures" / "table1") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "(evaluation.faithful.lr: 30.0 vs 10.0)" in err, err
    assert not (tmp_path / "figures").exists()


def test_the_methods_figure_refuses_a_probe_without_its_training_speed(tmp_path, capsys):
    paths = [
        _write(tmp_path, "a.json", _probe()),
        _write(tmp_path, "b.json", _rest(_probe(seed=1), "train_images_per_s")),
    ]
    assert _figure("fig_methods", paths, tmp_path / "figures" / "fig_methods") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{paths[1]} lacks the metric train_images_per_s" in err, err
    assert not (tmp_path / "figures").exists()
