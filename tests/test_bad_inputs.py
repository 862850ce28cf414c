"""A catalogue of bad inputs to ``python -m negatives``: each must end in one
line on stderr that names the key or file (no traceback), exit status 2,
and leave every file as it was -- no finished run touched, no run folder
made for a command refused before any work."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from negatives.cli import main
from negatives.data import prepare
from negatives.runtime.locks import RunLock
from negatives.training.pretrain import pretrain

TINY = dict(backbone="small-cnn", width=4, dim=8, epochs=1, batch_size=16, queue_size=32, bn_splits=2,
            knn_monitor=0, threads=1)


@pytest.fixture(scope="module")
def files(fashion_root, tmp_path_factory):
    """A prepared dataset and a finished run, shared by the catalogue."""
    root = tmp_path_factory.mktemp("catalogue")
    data = prepare("fashion-mnist", fashion_root, root / "data")
    pretrain(data, "moco", "all", 0.2, 0, TINY, root / "finished", log=lambda m: None)
    return root, data


def _pretrain(out="new", policy="all", temperature="0.2", method="moco", **settings):
    return lambda root, data: ["pretrain", "--data", str(data), "--method", method, "--policy", policy,
                               "--temperature", temperature, "--seed", "0", "--settings",
                               json.dumps({**TINY, **settings}), "--out", str(root / out)]


def _evaluate(checkpoint="finished/checkpoint.pt", **settings):
    return lambda root, data: ["evaluate", "--data", str(data), "--checkpoint", str(root / checkpoint),
                               "--settings", json.dumps(settings), "--out", str(root / "new" / "probe.json")]


def _analyze(**settings):
    return lambda root, data: ["analyze", "--data", str(data), "--checkpoint", str(root / "finished/checkpoint.pt"),
                               "--similarity", str(root / "missing.tsv"), "--settings", json.dumps(settings),
                               "--out", str(root / "new" / "pairs.parquet")]


#: (id, argv builder, the message it must give)
CATALOGUE = [
    ("pretrain epochs 0", _pretrain(epochs=0), r"pretrain\.epochs: 0 is less than the minimum of 1"),
    ("pretrain epochs a string", _pretrain(epochs="2"), r"pretrain\.epochs: '2' is not of type 'integer'"),
    ("pretrain lr negative", _pretrain(lr=-1), r"pretrain\.lr: -1 is less than or equal to the minimum of 0"),
    ("pretrain momentum 1", _pretrain(momentum=1.0), r"pretrain\.momentum: 1\.0 is greater than or equal"),
    ("pretrain unknown key", _pretrain(thread=2), r"'thread' was unexpected.*allowed: .*threads"),
    ("pretrain unknown backbone", _pretrain(backbone="vit"), r"pretrain\.backbone: 'vit' is not one of"),
    ("pretrain device", _pretrain(device="tpu"), r"pretrain\.device: 'tpu' is not one of"),
    ("pretrain queue not a multiple", _pretrain(queue_size=40), r"pretrain\.queue_size: 40 must be a multiple"),
    ("pretrain queue below the batch", _pretrain(queue_size=8), r"pretrain\.queue_size: 8 must be a multiple"),
    ("pretrain splits", _pretrain(bn_splits=3), r"pretrain\.bn_splits: 3 must divide pretrain\.batch_size \(16\)"),
    ("pretrain batch 0", _pretrain(batch_size=0), r"pretrain\.batch_size: 0 is less than the minimum of 1"),
    ("pretrain crop scale", _pretrain(crop_scale_min=1.5), r"pretrain\.crop_scale_min: 1\.5 is greater than"),
    ("pretrain negative temperature", _pretrain(temperature="-0.5"), r"temperature: must be a positive number"),
    ("pretrain zero temperature", _pretrain(temperature="0"), r"temperature: must be a positive number"),
    ("pretrain unknown method", _pretrain(method="byol"), r"method 'byol'; allowed: moco, simclr"),
    ("pretrain unknown policy", _pretrain(policy="keep[5)"), r"policy 'keep\[5\)'.*malformed band"),
    ("pretrain band out of range", _pretrain(policy="keep[90_101)"), r"band bounds must lie in \[0, 100\]"),
    ("pretrain band holds none", _pretrain(policy="keep[99.9_100)"), r"the band holds no negative out of 32"),
    ("pretrain drop removes all", _pretrain(policy="drop[0_100)"), r"removes every one of the 32 negatives"),
    ("pretrain unknown mode", _pretrain(policy="drop[90_100)@swap"), r"unknown mode 'swap' after '@'"),
    ("pretrain replace of a keep", _pretrain(policy="keep[90_100)@replace"), r"'@replace' applies to a removal"),
    ("pretrain replace without room", _pretrain(policy="drop[90_100)@replace", queue_extra=0),
     r"pretrain\.queue_extra: 0 must be a positive multiple of pretrain\.batch_size \(16\)"),
    ("pretrain replace with simclr", _pretrain(policy="drop[90_100)@replace", method="simclr", queue_extra=16),
     r"replace mode needs MoCo's queue of older negatives; simclr has none"),
    ("pretrain retain-hard with simclr", _pretrain(policy="retain-hard[0.25]", method="simclr"),
     r"works through MoCo's queue of negatives; simclr has none \(use method moco\)"),
    ("pretrain mochi more hardest than negatives", _pretrain(policy="mochi[64_8_4]"), r"only 32 candidates"),
    ("pretrain mochi warm-up longer than training", _pretrain(policy="mochi[8_4_4_1]"), r"warm-up of 1 epochs"),
    ("pretrain ring outer ball", _pretrain(policy="ring[0_10]"), r"ring"),
    ("pretrain debiased prior", _pretrain(policy="debiased[1.5]"), r"tau_plus must lie in \[0, 1\)"),
    ("pretrain retain fraction", _pretrain(policy="retain-hard[2]"), r"r must lie in \(0, 1\)"),
    ("pretrain missing data", lambda root, data: _pretrain()(root, root / "nowhere" / "data.pt"),
     r"nowhere/data\.pt: no prepared dataset \(data\.pt\) there; build it again \(snakemake .*nowhere/data\.pt"),
    ("pretrain queue longer than the images", _pretrain(queue_size=128), r"pretrain\.queue_size 128 is larger than "
                                                                           r"the 64 training images"),
    ("pretrain batch larger than the images", _pretrain(batch_size=128, queue_size=128, bn_splits=2),
     r"pretrain\.batch_size 128 is larger than the 64 training images"),
    ("pretrain a finished run", _pretrain(out="finished"), r"finished/checkpoint\.pt exists: the run is finished"),
    ("evaluate knn_k 0", _evaluate(knn_k=0), r"evaluate\.knn_k: 0 is less than the minimum of 1"),
    ("evaluate unknown probe", _evaluate(probe="paper"), r"evaluate\.probe: 'paper' is not one of \['fast', 'faithful'\]"),
    ("evaluate unknown key", _evaluate(knn_kk=3), r"'knn_kk' was unexpected.*allowed: .*knn_k"),
    ("evaluate temperature", _evaluate(knn_temperature=0), r"evaluate\.knn_temperature: 0 is less than or equal"),
    ("evaluate faithful epochs", _evaluate(faithful={"epochs": 0}), r"evaluate\.faithful\.epochs: 0 is less than"),
    ("evaluate faithful unknown key", _evaluate(faithful={"lrr": 1}), r"'lrr' was unexpected"),
    ("evaluate missing checkpoint", _evaluate(checkpoint="nowhere/checkpoint.pt"),
     r"nowhere/checkpoint\.pt: no finished run's checkpoint there; train the run \(snakemake "),
    ("analyze queries 0", _analyze(queries=0), r"analysis\.queries: 0 is less than the minimum of 1"),
    ("analyze unknown key", _analyze(querys=10), r"'querys' was unexpected.*allowed: .*queries"),
    ("analyze seed negative", _analyze(seed=-1), r"analysis\.seed: -1 is less than the minimum of 0"),
    ("init width 0", lambda root, data: ["init", "--data", str(data), "--seed", "0", "--settings",
                                         json.dumps({**TINY, "width": 0}), "--out", str(root / "new")],
     r"pretrain\.width: 0 is less than the minimum of 1"),
]


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("builder, message", [c[1:] for c in CATALOGUE], ids=[c[0] for c in CATALOGUE])
def test_a_bad_input_is_one_line_naming_it_and_changes_nothing(files, capsys, builder, message):
    root, data = files
    before = _snapshot(root)
    status = main(builder(root, data))
    err = capsys.readouterr().err
    assert status == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert pytest.importorskip("re").search(message, lines[0]), lines[0]
    assert lines[0].startswith("negatives ")
    assert _snapshot(root) == before                     # nothing written, nothing changed
    assert not (root / "new").exists()                   # refused before any work: no run folder made


def test_a_run_being_trained_is_refused_and_left_alone(files, capsys):
    root, data = files
    with RunLock(root / "busy"):
        before = _snapshot(root)
        status = main(_pretrain(out="busy")(root, data))
        assert _snapshot(root) == before
    err = capsys.readouterr().err
    assert status == 2 and "busy is being trained by pid" in err and "Traceback" not in err


def test_bad_json_settings_is_a_usage_error():
    with pytest.raises(SystemExit) as e:
        main(["pretrain", "--data", "x", "--policy", "all", "--temperature", "0.2", "--seed", "0",
              "--settings", "{epochs: 2}", "--out", "y"])
    assert e.value.code == 2


def test_the_catalogue_is_large():
    assert len(CATALOGUE) >= 40


def test_damaged_and_mismatched_files_are_named(files, tmp_path, capsys):
    """A truncated data.pt or checkpoint.pt, a rolling last.pt given to
    evaluate, a checkpoint of another dataset, an --out that cannot be
    written: one line each, naming the file, before the evaluation runs."""
    import torch

    root, data = files
    truncated = tmp_path / "data.pt"
    truncated.write_bytes(Path(data).read_bytes()[:1000])
    ckpt = root / "finished" / "checkpoint.pt"
    half = tmp_path / "checkpoint.pt"
    half.write_bytes(ckpt.read_bytes()[:500])
    other = tmp_path / "other.pt"
    state = torch.load(ckpt, weights_only=False)
    state["meta"]["dataset"] = "cifar10"
    torch.save(state, other)
    locked = tmp_path / "ro"
    locked.mkdir()
    locked.chmod(0o500)
    cases = [
        (["--data", str(truncated), "--checkpoint", str(ckpt)], rf"{truncated} is not a complete prepared dataset"),
        (["--data", str(data), "--checkpoint", str(half)], rf"{half} is not a complete finished run's checkpoint"),
        (["--data", str(data), "--checkpoint", str(other)], r"was trained on 'cifar10' \(1 channels\), but .* holds "
                                                             r"'fashion-mnist'"),
    ]
    for args, message in cases:
        assert main(["evaluate", *args, "--out", str(tmp_path / "new" / "probe.json")]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and __import__("re").search(message, err), err
    import os

    if os.geteuid() != 0:  # root writes anywhere
        assert main(["evaluate", "--data", str(data), "--checkpoint", str(ckpt), "--out",
                     str(locked / "probe.json")]) == 2
        assert "is not writable" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()


def test_a_figure_names_the_damaged_input_and_writes_nothing(tmp_path, capsys):
    import yaml

    cfg = yaml.safe_load((Path(__file__).resolve().parents[1] / "config.yaml").read_text())
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"dataset": "d", "method": "moco", "policy": "all", "temperature": 0.2, "seed": 0,
                                "linear_top1": 50.0}))
    truncated = tmp_path / "probe.json"
    truncated.write_text('{"dataset": "d", "method": "mo')
    foreign = tmp_path / "other.json"
    foreign.write_text("[1, 2]")
    for bad, message in ((truncated, "is not a complete probe.json"), (foreign, "is not a probe.json"),
                         (tmp_path / "missing.json", "no probe.json there; evaluate the run")):
        status = main(["figure", "fig2", "--probes", str(good), str(bad), "--config-json", json.dumps(cfg),
                       "--out", str(tmp_path / "figures" / "fig2")])
        err = capsys.readouterr().err.strip()
        assert status == 2 and len(err.splitlines()) == 1 and f"{bad}" in err and message in err, err
    assert not (tmp_path / "figures").exists()
