"""How long Snakemake takes to build the DAG of a large grid.

    python benchmarks/dag_build.py                              # config.yaml, then the paper's grid
    python benchmarks/dag_build.py --config configs/imagenet-paper.yaml

For each config: a dry run (``snakemake -n``) of the default target, timed
from the process start to its end (Python start-up, config validation, the
grid, DAG and job planning), with the number of jobs planned.  The dataset
root of each config need not exist (``--config`` points it at a throw-away
empty directory when ``--fake-root`` is given; the checks of the data
directory are skipped in dry runs, see README).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def dry_run(config: Path, workdir: Path) -> tuple[float, int, str]:
    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        "-s",
        str(ROOT / "Snakefile"),
        "-d",
        str(workdir),
        "--configfile",
        str(config.resolve()),
        "-n",
        "--quiet",
        "rules",
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - t0
    out = proc.stdout + proc.stderr
    m = re.search(r"^total\s+(\d+)", out, re.M)
    return seconds, int(m.group(1)) if m else -1, out if proc.returncode else ""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--config", action="append", type=Path, help="config file(s) (default: config.yaml and every configs/*.yaml)"
    )
    args = ap.parse_args()
    configs = args.config or [ROOT / "config.yaml", *sorted((ROOT / "configs").glob("*.yaml"))]
    print(f"{'config':40s} {'jobs':>6s} {'seconds':>8s}")
    for config in configs:
        with tempfile.TemporaryDirectory() as tmp:
            seconds, jobs, err = dry_run(config, Path(tmp))
        print(f"{str(config.relative_to(ROOT) if config.is_absolute() else config):40s} {jobs:6d} {seconds:8.2f}")
        if err:
            print(err[-2000:])


if __name__ == "__main__":
    main()
