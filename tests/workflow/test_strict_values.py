"""Strict values, the same at every entry point: NaN and infinity are refused
wherever a number is read (a config, ``--settings``, ``--config-json``,
``--temperature``, policy strings); an integer key refuses 16.0; a key
written twice is refused; the command line refuses what the workflow
refuses (``max_steps``, ``knn_k`` above the training images, milestones past
the probe's last epoch, fewer images than classes).  Each bad input ends in
one line naming the key (exit status 2 for ``python -m negatives``), before
any work, and leaves every file as it was."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
import torch
import yaml
from conftest import ROOT
from test_bad_inputs import TINY, _analyze, _config, _evaluate, _files, _pretrain, _snapshot, files, refused, work  # noqa: F401

from negatives.runtime.checkpoint import save_rolling
from negatives.training.settings import PretrainSettings


@pytest.fixture(scope="module")
def strict_files(files):
    """The catalogue's files, plus an unfinished run: its rolling last.pt."""
    root, data = files
    state = torch.load(root / "finished" / "checkpoint.pt", weights_only=False)
    (root / "unfinished").mkdir(exist_ok=True)
    save_rolling(
        {"meta": state["meta"], "model": state["model"], "optimizer": {}, "epoch": 0, "step_in_epoch": 0, "log": []},
        root / "unfinished" / "last.pt",
    )
    return root, data


def _raw(argv_builder, settings: str):
    """``argv_builder``'s command with ``--settings`` replaced by ``settings`` as written (NaN, a key twice)."""

    def build(root, data):
        argv = argv_builder(root, data)
        argv[argv.index("--settings") + 1] = settings
        return argv

    return build


def _tiny(extra: str) -> str:
    """TINY as JSON with ``extra`` (JSON text) added at its end."""
    return json.dumps(TINY)[:-1] + ", " + extra + "}"


def _prepare(*extra):
    return lambda root, data: [
        "prepare",
        "--dataset",
        "fashion-mnist",
        "--root",
        str(root.parent / f"{root.name}-source"),
        "--out",
        str(root / "new"),
        *extra,
    ]


def _figure(**figures):
    def build(root, data):
        cfg = yaml.safe_load((ROOT / "config.yaml").read_text())
        cfg["figures"].update(figures)
        probe = root / "finished" / "checkpoint.pt"  # never read: the config is refused first
        return [
            "figure",
            "fig4",
            "--probes",
            str(probe),
            "--config-json",
            json.dumps(cfg),
            "--out",
            str(root / "new" / "fig4"),
        ]

    return build


_NONFINITE = r"must be a (positive|finite) number, got (nan|inf) \(NaN and infinity are refused\)"
_NOT_INT = r"is not an integer \(integer keys take whole numbers written without a point: \d+\)"
_UNFINISHED = (
    r"unfinished/last\.pt is not a finished run's checkpoint\.pt: a last\.pt is an unfinished run's rolling "
    r"checkpoint, read by the trainer only and left as it is; give the run's checkpoint\.pt once the run is "
    r"finished \(snakemake .*unfinished/checkpoint\.pt\)"
)

#: (id, argv builder, the message it must give)
CATALOGUE = [
    ("temperature nan", _pretrain(temperature="nan"), rf"temperature: {_NONFINITE}"),
    ("temperature inf", _pretrain(temperature="inf"), rf"temperature: {_NONFINITE}"),
    ("temperature 1e400", _pretrain(temperature="1e400"), rf"temperature: {_NONFINITE}"),
    ("pretrain lr NaN", _raw(_pretrain(), _tiny('"lr": NaN')), rf"pretrain\.lr: {_NONFINITE}"),
    (
        "pretrain momentum Infinity",
        _raw(_pretrain(), _tiny('"momentum": Infinity')),
        rf"pretrain\.momentum: {_NONFINITE}",
    ),
    ("pretrain lr 1e400", _raw(_pretrain(), _tiny('"lr": 1e400')), rf"pretrain\.lr: {_NONFINITE}"),
    ("pretrain width 4.0", _pretrain(width=4.0), rf"pretrain\.width: 4\.0 {_NOT_INT}"),
    ("pretrain epochs 1.0", _pretrain(epochs=1.0), rf"pretrain\.epochs: 1\.0 {_NOT_INT}"),
    ("pretrain hidden_dim 8.0", _pretrain(hidden_dim=8.0), rf"pretrain\.hidden_dim: 8\.0 {_NOT_INT}"),
    (
        "pretrain a key twice",
        _raw(_pretrain(), _tiny('"epochs": 2')),
        r"pretrain\.epochs: written twice in --settings \(JSON would keep only the last\); write it once",
    ),
    (
        "pretrain max_steps",
        _pretrain(max_steps=1),
        r"pretrain\.max_steps: not a config key .*would be written as finished",
    ),
    (
        "init max_steps",
        lambda root, data: [
            "init",
            "--data",
            str(data),
            "--seed",
            "0",
            "--settings",
            json.dumps({**TINY, "max_steps": 1}),
            "--out",
            str(root / "new"),
        ],
        r"pretrain\.max_steps: not a config key",
    ),
    (
        "init width 4.0",
        lambda root, data: [
            "init",
            "--data",
            str(data),
            "--seed",
            "0",
            "--settings",
            json.dumps({**TINY, "width": 4.0}),
            "--out",
            str(root / "new"),
        ],
        rf"pretrain\.width: 4\.0 {_NOT_INT}",
    ),
    ("policy with nan", _pretrain(policy="keep[nan_100)"), r"policy 'keep\[nan_100\)': nan is not a finite number"),
    ("policy with 1e400", _pretrain(policy="hard[1e400_0.1]"), r"the number 1e400 is too large to be finite"),
    ("policy with inf", _pretrain(policy="ring[inf->10_10_linear_50]"), r"inf is not a finite number"),
    (
        "policy with a 400-digit count",
        _pretrain(policy="mochi[" + "9" * 400 + "_8_4]"),
        r"the number 999999999999\.\.\. \(400 characters\) is too large to be finite",
    ),
    (
        "evaluate knn_temperature NaN",
        _raw(_evaluate(), '{"knn_temperature": NaN}'),
        rf"evaluate\.knn_temperature: {_NONFINITE}",
    ),
    ("evaluate knn_k 5.0", _evaluate(knn_k=5.0), rf"evaluate\.knn_k: 5\.0 {_NOT_INT}"),
    (
        "evaluate knn_k above the training images",
        _evaluate(knn_k=65, fewshot_labels_per_class=2),
        r"evaluate\.knn_k: 65 neighbours, but .*data\.pt holds 64 training images; allowed: at most 64",
    ),
    (
        "evaluate milestones past the last epoch",
        _evaluate(probe="faithful", faithful={"epochs": 2, "milestones": [5]}),
        r"evaluate\.faithful\.milestones: \[5\] must be increasing epochs in 1\.\.1 \(evaluate\.faithful\.epochs is 2\)",
    ),
    (
        "evaluate milestone 1.0",
        _evaluate(probe="faithful", faithful={"epochs": 3, "milestones": [1.0]}),
        rf"evaluate\.faithful\.milestones\[0\]: 1\.0 {_NOT_INT}",
    ),
    (
        "evaluate faithful lr Infinity",
        _raw(_evaluate(), '{"faithful": {"lr": Infinity}}'),
        rf"evaluate\.faithful\.lr: {_NONFINITE}",
    ),
    (
        "evaluate a nested key twice",
        _raw(_evaluate(), '{"faithful": {"lr": 5, "lr": 6}}'),
        r"evaluate\.faithful\.lr: written twice in --settings",
    ),
    ("evaluate an unfinished run's last.pt", _evaluate(checkpoint="unfinished/last.pt"), _UNFINISHED),
    (
        "analyze an unfinished run's last.pt",
        lambda root, data: [
            a.replace("finished/checkpoint.pt", "unfinished/last.pt")
            for a in _analyze("data/similarity.tsv")(root, data)
        ],
        _UNFINISHED,
    ),
    ("analyze queries 10.0", _analyze("data/similarity.tsv", queries=10.0), rf"analysis\.queries: 10\.0 {_NOT_INT}"),
    ("analyze seed NaN", _raw(_analyze("data/similarity.tsv"), '{"seed": NaN}'), rf"analysis\.seed: {_NONFINITE}"),
    (
        "prepare fewer training images than classes",
        _prepare("--train-images", "5"),
        r"datasets\.fashion-mnist\.train_images: 5 images are fewer than the 10 classes",
    ),
    (
        "prepare stream_above_gb NaN",
        _prepare("--settings", '{"stream_above_gb": NaN}'),
        rf"datasets\.fashion-mnist\.stream_above_gb: {_NONFINITE}",
    ),
    (
        "prepare a key twice",
        _prepare("--settings", '{"storage": "memory", "storage": "auto"}'),
        r"datasets\.fashion-mnist\.storage: written twice in --settings",
    ),
    ("figure hard_cut NaN", _figure(fig4={"hard_cut": float("nan")}), rf"figures\.fig4\.hard_cut: {_NONFINITE}"),
]


@pytest.mark.parametrize("builder, message", [c[1:] for c in CATALOGUE], ids=[c[0] for c in CATALOGUE])
def test_a_bad_value_is_one_line_naming_its_key_and_changes_nothing(strict_files, capsys, builder, message):
    root, data = strict_files
    line = refused(root, builder(root, data), message, capsys)  # the unfinished run's last.pt left as it was too
    assert "delete" not in line


def test_the_python_api_keeps_max_steps():
    """Tests and benchmarks stop runs early through the API; only the command line refuses it."""
    assert PretrainSettings.from_dict({"max_steps": 3}).max_steps == 3


# ------------------------------------------------------------- the workflow


def _append(text: str):
    """Builder: ``text`` (YAML as written: .nan, 1e400) appended to override.yaml."""
    return lambda work: (work / "override.yaml").write_text((work / "override.yaml").read_text() + text)


#: (id, setup of the workdir, extra snakemake arguments, the message it must give)
WORKFLOW_CATALOGUE = [
    ("lr .nan", _append("pretrain:\n  lr: .nan\n"), [], rf"pretrain\.lr: {_NONFINITE}"),
    ("temperature 1e400", _append("temperatures: [1e400]\n"), [], rf"temperatures\[0\]: {_NONFINITE}"),
    (
        "a figure's temperature .inf",
        _append("figures:\n  fig2:\n    temperatures: [.inf]\n"),
        [],
        rf"figures\.fig2\.temperatures\[0\]: {_NONFINITE}",
    ),
    (
        "hard_cut .nan",
        _append("figures:\n  fig4:\n    hard_cut: .nan\n"),
        [],
        rf"figures\.fig4\.hard_cut: {_NONFINITE}",
    ),
    ("width 16.0", _config(pretrain={"width": 16.0}), [], rf"pretrain\.width: 16\.0 {_NOT_INT}"),
    ("seeds [0.0]", _config(seeds=[0.0]), [], rf"seeds\[0\]: 0\.0 {_NOT_INT}"),
    (
        "jobs_per_gpu 1.0 from --config",
        lambda work: None,
        ["--config", "jobs_per_gpu=1.0"],
        rf"jobs_per_gpu: 1\.0 {_NOT_INT}",
    ),
    (
        "knn_k above the training images",
        _config(evaluate={"knn_k": 9000}),
        [],
        r"evaluate\.knn_k: 9000 neighbours, but datasets\.fashion-mnist\.train_images holds 8000 training images",
    ),
    (
        "fewer training images than classes",
        _config(datasets={"fashion-mnist": {"train_images": 5}}),
        [],
        r"datasets\.fashion-mnist\.train_images: 5 images are fewer than the 10 classes",
    ),
    (
        "a policy with a 400-digit count",
        _config(figures={"fig_methods": {"policies": ["mochi[" + "9" * 400 + "_8_4]"]}}),
        [],
        r"figures\.fig_methods\.policies\[0\]: policy .*too large to be finite",
    ),
]


#: the entries CI runs (a workflow plan is several seconds each); the rest are marked slow
IN_CI = ("lr .nan", "width 16.0", "knn_k above the training images")


@pytest.mark.parametrize(
    "setup, extra, message",
    [pytest.param(*c[1:], marks=[pytest.mark.slow] * (c[0] not in IN_CI)) for c in WORKFLOW_CATALOGUE],
    ids=[c[0] for c in WORKFLOW_CATALOGUE],
)
def test_a_bad_config_value_is_named_before_any_job_and_changes_nothing(work, setup, extra, message):
    setup(work)
    before = _files(work)
    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        "-s",
        str(ROOT / "Snakefile"),
        "-d",
        str(work),
        "-n",
        "--configfile",
        str(work / "override.yaml"),
        *extra,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=work)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out[-3000:]
    assert re.search(rf"invalid config: {message}", out), out[-3000:]
    assert "Traceback" not in out and "Building DAG" not in out, out[-3000:]
    assert _files(work) == before
