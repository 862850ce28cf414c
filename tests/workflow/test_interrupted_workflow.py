"""Nothing computed is lost: a workflow killed (SIGKILL, the whole process
group) after some jobs finished and started again runs only what was
unfinished; every finished output keeps its modification time."""

from __future__ import annotations

import collections
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml
from conftest import ROOT
from test_end_to_end import tiny_config

PRETRAINS = ("all", "keep[95_100)", "keep[0_95)")


def _snakemake(tmp_path, *extra):
    return [
        sys.executable,
        "-m",
        "snakemake",
        "--snakefile",
        str(ROOT / "Snakefile"),
        "--directory",
        str(tmp_path),
        "--profile",
        str(ROOT / "profiles" / "local"),
        "--cores",
        "1",
        "fig2",
        *extra,
    ]


def _outputs(results: Path) -> dict[Path, int]:
    """Every finished file under results/ and its mtime (ns); last.pt and
    .tmp files are a run's working state, not outputs."""
    return {
        p: p.stat().st_mtime_ns
        for p in results.rglob("*")
        if p.is_file() and not p.name.startswith("last.") and not p.name.endswith(".tmp")
    }


def test_a_killed_workflow_reruns_only_what_was_unfinished(tmp_path):
    cfg = tiny_config(tmp_path)
    cfg["seeds"] = [0]
    cfg["figures"]["fig2"] = {"segments": ["keep[95_100)"], "easiest": ["keep[0_95)"]}
    cfg["pretrain"].update(epochs=3)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    runs = tmp_path / "results" / "fashion-mnist" / "moco"

    first = subprocess.Popen(
        _snakemake(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        start_new_session=True,
    )
    deadline = time.monotonic() + 600
    try:  # kill once snakemake has recorded a pretraining job as finished
        for line in first.stdout:
            assert time.monotonic() < deadline, "no pretraining finished within 10 minutes"
            if "(Rule: pretrain)" in line and line.startswith("Finished jobid"):
                break
        else:
            raise AssertionError("the workflow ended before it could be killed")
    finally:
        os.killpg(first.pid, signal.SIGKILL)  # snakemake and the job it runs, mid-flight
        first.wait(timeout=60)
    finished = _outputs(tmp_path / "results")
    done = [p for p in PRETRAINS if (runs / p / "t0.2" / "seed0" / "checkpoint.pt") in finished]
    assert 1 <= len(done) < len(PRETRAINS) and not (tmp_path / "results" / "figures" / "fig2.csv").exists()

    # a SIGKILLed snakemake leaves its lock: `--unlock` first, as snakemake's message says
    unlock = subprocess.run(_snakemake(tmp_path, "--unlock"), capture_output=True, text=True, timeout=300, env=env)
    assert unlock.returncode == 0, unlock.stderr[-2000:]
    second = subprocess.run(_snakemake(tmp_path), capture_output=True, text=True, timeout=900, env=env)
    log = second.stdout + second.stderr
    assert second.returncode == 0, log[-4000:]
    assert (tmp_path / "results" / "figures" / "fig2.csv").exists()
    # what had finished is untouched, and was not run again
    changed = [str(p) for p, mtime in finished.items() if p.stat().st_mtime_ns != mtime]
    assert not changed, f"finished outputs were rewritten: {changed}"
    ran = collections.Counter(re.findall(r"^(?:local)?rule (\w+):$", log, re.M))
    probes = [runs / f"{p}/t0.2/seed0/probe.json" for p in PRETRAINS] + [runs / "random-init/seed0/probe.json"]
    data = tmp_path / "results" / "data" / "fashion-mnist" / "data.pt"
    assert (
        ran
        == collections.Counter(
            {
                "prepare": data not in finished,
                "random_init": runs / "random-init/seed0/checkpoint.pt" not in finished,
                "pretrain": len(PRETRAINS) - len(done),
                "evaluate": sum(p not in finished for p in probes),
                "fig2": 1,
            }
        )
        - collections.Counter()
    ), log[-3000:]


def test_changing_speed_only_settings_over_finished_runs_retrains_nothing(tmp_path):
    """``evaluate.threads`` and ``jobs_per_gpu`` are speed only: changed after
    a run and its probe finished, ``snakemake -n`` has nothing to do; a
    setting that changes results (epochs), or a run's last bits
    (pretrain.threads, pretrain.compile), is refused, naming it: it would
    replace the finished run."""
    cfg = tiny_config(tmp_path)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    target = "results/fashion-mnist/moco/all/t0.2/seed0/probe.json"
    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        "--snakefile",
        str(ROOT / "Snakefile"),
        "--directory",
        str(tmp_path),
        "--cores",
        "1",
        target,
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    cfg["evaluate"]["threads"] = 2
    cfg["jobs_per_gpu"] = 3
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    plan = subprocess.run(cmd + ["-n"], capture_output=True, text=True, env=env, timeout=300)
    assert plan.returncode == 0 and "Nothing to be done" in plan.stdout + plan.stderr, plan.stdout + plan.stderr
    for key, value in (("epochs", 2), ("threads", 2), ("compile", True)):  # refused: it would replace the run
        (tmp_path / "config.yaml").write_text(yaml.safe_dump({**cfg, "pretrain": {**cfg["pretrain"], key: value}}))
        plan = subprocess.run(cmd + ["-n"], capture_output=True, text=True, env=env, timeout=300)
        said = plan.stdout + plan.stderr
        assert plan.returncode != 0 and f"pretrain.{key} " in said and "never replaces a finished run" in said, said
