"""Every job kill-safe: a ``prepare``, ``init``, ``evaluate``, ``similarity``,
``analyze`` or ``figure`` command killed (SIGKILL, or SIGTERM) at any moment leaves no partial
output (its files are either absent or whole, as their check files say)
and changes no other file; the same command then runs to the end.  (Pretraining's own
kills, mid-step and mid-write, are in tests/training/test_checkpoint.py,
tests/runtime/test_distributed.py and tests/training/test_run_lock.py; the workflow's in
tests/workflow/test_interrupted_workflow.py.)"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import ROOT
from test_bad_inputs import TINY, _snapshot, files  # noqa: F401 -- the shared prepared data and finished run

from negatives.runtime.atomic import verify


def _figure_inputs(out: Path) -> list[str]:
    """Fig. 2's probes of two seeds of ``all`` and one band, and a random init."""
    from test_knn_and_probe_records import _probe, _write

    (out / "probes").mkdir(exist_ok=True)
    paths = [
        _write(out / "probes", f"{policy}-{seed}.json", _probe(policy=policy, seed=seed))
        for policy in ("all", "keep[95_100)")
        for seed in (0, 1)
    ]
    untrained = {**_probe(policy="random-init"), "epochs": 0, "temperature": None}
    return [*map(str, paths), str(_write(out / "probes", "random-init.json", untrained))]


def _jobs(root: Path, data: Path, out: Path) -> dict[str, tuple[list[str], Path]]:
    """Each command, and the file it writes under ``out`` (the figure's
    command is made when asked for: it writes its probes first)."""
    checkpoint = str(root / "finished" / "checkpoint.pt")
    cfg = yaml.safe_load((ROOT / "config.yaml").read_text())
    cfg["figures"]["fig2"] = {"segments": ["keep[95_100)"], "easiest": []}
    return {
        "figure": (
            lambda: [
                "figure",
                "fig2",
                "--probes",
                *_figure_inputs(out),
                "--config-json",
                json.dumps(cfg),
                "--out",
                str(out / "figures" / "fig2"),
            ],
            out / "figures" / "fig2.png",
        ),
        "prepare": (
            [
                "prepare",
                "--dataset",
                "fashion-mnist",
                "--root",
                str(root.parent / f"{root.name}-source"),
                "--out",
                str(out / "data"),
            ],
            out / "data" / "data.pt",
        ),
        "init": (
            ["init", "--data", str(data), "--seed", "0", "--settings", json.dumps(TINY), "--out", str(out / "init")],
            out / "init" / "checkpoint.pt",
        ),
        "evaluate": (
            [
                "evaluate",
                "--data",
                str(data),
                "--checkpoint",
                checkpoint,
                "--settings",
                json.dumps({"knn_k": 5, "fewshot_labels_per_class": 1}),
                "--out",
                str(out / "probe.json"),
            ],
            out / "probe.json",
        ),
        "similarity": (
            ["similarity", "--classes", str(root / "data" / "classes.tsv"), "--out", str(out / "similarity.tsv")],
            out / "similarity.tsv",
        ),
        "analyze": (
            [
                "analyze",
                "--data",
                str(data),
                "--checkpoint",
                checkpoint,
                "--similarity",
                str(root / "data" / "similarity.tsv"),
                "--settings",
                json.dumps({"queries": 20, "negatives": 20}),
                "--out",
                str(out / "pairs.parquet"),
            ],
            out / "pairs.parquet",
        ),
        "dynamics": (
            [
                "dynamics",
                "--data",
                str(data),
                "--checkpoint",
                checkpoint,
                "--similarity",
                str(root / "data" / "similarity.tsv"),
                "--settings",
                json.dumps({"dynamics_queries": 20, "dynamics_negatives": 20}),
                "--out",
                str(out / "dynamics.csv"),
            ],
            out / "dynamics.csv",
        ),
    }


def _run(argv: list[str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "negatives", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


@pytest.mark.parametrize(
    "job",
    [
        "prepare",
        "evaluate",
        *(pytest.param(j, marks=pytest.mark.slow) for j in ("init", "similarity", "analyze", "dynamics", "figure")),
    ],
)
def test_a_job_killed_at_any_moment_leaves_no_partial_output_and_runs_again(files, tmp_path, job):  # noqa: F811
    root, data = files
    argv, output = _jobs(root, Path(data), tmp_path)[job]
    argv = argv() if callable(argv) else argv
    start = time.monotonic()
    whole = _run(argv)
    assert whole.wait(timeout=300) == 0, whole.stderr.read()
    took = time.monotonic() - start
    for name in [output.name, *(p.name for p in output.parent.iterdir() if p.name != output.name)]:
        (output.parent / name).unlink()
    before = _snapshot(root)
    for fraction, sig in ((0.3, signal.SIGKILL), (0.6, signal.SIGTERM), (0.9, signal.SIGKILL)):
        killed = _run(argv)
        time.sleep(fraction * took)
        killed.send_signal(sig)
        status = killed.wait(timeout=120)
        assert status in (0, -sig), (status, killed.stderr.read())  # finished first, or killed
        for written in output.parent.iterdir():  # what a reader would take: whole
            if written.is_file() and not written.name.startswith("."):  # (a SIGKILL may leave a hidden,
                verify(written, job, "run it again")  # per-process .tmp, never read)
        assert _snapshot(root) == before  # nothing else touched
        for p in list(output.parent.iterdir()):
            if p.is_file():
                p.unlink()
    again = _run(argv)
    assert again.wait(timeout=300) == 0, again.stderr.read()
    verify(output, job, "run it again")
