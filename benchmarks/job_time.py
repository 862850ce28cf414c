"""Wall time of whole workflow jobs (process start to exit), a revision
against the working tree, side by side.

    python benchmarks/job_time.py --data results/data/fashion-mnist/data.pt [--before 5182727] [--repeats 3]

Runs the commands the workflow's rules run -- ``python -m negatives
pretrain`` (each revision's default config, one epoch) and ``python -m negatives
evaluate`` of the checkpoint it wrote -- once with the package of revision
``--before`` and once with the working tree's, alternately, ``--repeats``
times, and prints the median seconds of each job and the ratio.  A job's
fixed costs (starting Python, importing torch, whatever else the first
optimiser step imports) are paid by every one of the default run's ~140
training and evaluation jobs, so they show here and in no step benchmark.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _before import ROOT, extract_src  # noqa: E402

from negatives.config_files import read_config


def _run(src: Path, args: list[str]) -> float:
    env = {**os.environ, "PYTHONPATH": str(src)}
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "negatives", *args], check=True, env=env, capture_output=True)
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="a prepared data.pt (results/data/<dataset>/data.pt)")
    p.add_argument("--before", default="5182727")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument(
        "--config",
        default=str(ROOT / "config.yaml"),
        help="the working tree's config ('before' runs its own revision's config.yaml)",
    )
    a = p.parse_args()
    trees = {"before": extract_src(a.before), "after": ROOT / "src"}
    # each revision runs its own config.yaml (its settings may differ in keys)
    configs = {
        "before": yaml.safe_load(
            subprocess.run(
                ["git", "-C", str(ROOT), "show", f"{a.before}:config.yaml"], check=True, capture_output=True, text=True
            ).stdout
        ),
        "after": read_config(a.config),
    }
    pre = {who: json.dumps({**c["pretrain"], "epochs": a.epochs}) for who, c in configs.items()}
    ev = {who: json.dumps(c["evaluate"]) for who, c in configs.items()}
    times = {(who, job): [] for who in trees for job in ("pretrain", "evaluate")}
    work = Path(tempfile.mkdtemp(prefix="negatives_jobs_"))
    for r in range(a.repeats):
        for who, src in trees.items():
            out = work / f"{who}{r}"
            times[(who, "pretrain")].append(
                _run(
                    src,
                    [
                        "pretrain",
                        "--data",
                        a.data,
                        "--method",
                        "moco",
                        "--policy",
                        "all",
                        "--temperature",
                        "0.2",
                        "--seed",
                        "0",
                        "--settings",
                        pre[who],
                        "--out",
                        str(out),
                    ],
                )
            )
            times[(who, "evaluate")].append(
                _run(
                    src,
                    [
                        "evaluate",
                        "--data",
                        a.data,
                        "--checkpoint",
                        str(out / "checkpoint.pt"),
                        "--settings",
                        ev[who],
                        "--out",
                        str(out / "probe.json"),
                    ],
                )
            )
    print(
        f"revision {a.before} (before) against the working tree (after); pretrain: {a.epochs} epoch(s) of "
        f"{a.config}; median of {a.repeats}"
    )
    for job in ("pretrain", "evaluate"):
        b, f = statistics.median(times[("before", job)]), statistics.median(times[("after", job)])
        print(f"{job:<9} before {b:6.2f} s   after {f:6.2f} s   {b / f:.2f}x   saved {b - f:5.2f} s per job")


if __name__ == "__main__":
    main()
