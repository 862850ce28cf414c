"""Wall time of the default run, and how well it keeps the cores busy.

    python benchmarks/default_run.py                    # clone HEAD to a temporary folder, run it, report
    python benchmarks/default_run.py --keep /tmp/run    # ... in that folder, kept afterwards
    python benchmarks/default_run.py --log PATH         # report on a finished run's Snakemake log

Runs ``snakemake --cores all`` on ``config.yaml`` in a fresh clone of the
committed tree (so nothing computed before is reused; the Python
environment is this one's) and reads Snakemake's log: wall time, job
seconds per rule, and the busy share of the cores -- the job seconds over
wall time x cores, where a job's seconds are its threads' (every rule of the
default run uses one thread) and the cores are those Snakemake was given.
The targets: every figure within 30 minutes on a 2-core CPU (and
the further goal, half of that), and the cores never idle.
"""

from __future__ import annotations

import argparse
import collections
import datetime as dt
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_STAMP = re.compile(r"^\[(\w{3} \w{3} +\d+ [\d:]+ \d{4})\]")


def job_seconds(log: str) -> tuple[dict[str, list[float]], dict[str, int], int, float]:
    """From a Snakemake log: seconds of each finished job by rule, threads by
    rule, cores provided, and the wall seconds from the first job's start to
    the last one's end."""
    now, rule, started, start, rule_of, threads = None, None, None, {}, {}, {}
    seconds: dict[str, list[float]] = collections.defaultdict(list)
    cores, first, last = 1, None, None
    for line in log.splitlines():
        m = _STAMP.match(line)
        if m:
            now = dt.datetime.strptime(m.group(1), "%a %b %d %H:%M:%S %Y")
            continue
        if m := re.match(r"Provided cores: (\d+)", line):
            cores = int(m.group(1))
        elif m := re.match(r"(?:local)?rule (\S+):", line):
            rule = m.group(1)
        elif (m := re.match(r"\s+jobid: (\d+)", line)) and rule:
            start[m.group(1)], rule_of[m.group(1)], started, rule = now, rule, rule, None
            first = first or now
        elif (m := re.match(r"\s+threads: (\d+)", line)) and started:
            threads[started] = int(m.group(1))  # in the block of the job just started
        elif (m := re.match(r"Finished job(?:id:)? (\d+)", line)) and m.group(1) in start:
            j = m.group(1)
            seconds[rule_of[j]].append((now - start[j]).total_seconds())
            last = now
    wall = (last - first).total_seconds() if first and last else 0.0
    return seconds, threads, cores, wall


def report(log: str, wall: float | None = None) -> None:
    seconds, threads, cores, log_wall = job_seconds(log)
    wall = wall or log_wall
    total = sum(threads.get(r, 1) * s for r, v in seconds.items() for s in v)
    jobs = sum(len(v) for v in seconds.values())
    minutes, seconds_left = divmod(round(wall), 60)
    print(f"{jobs} jobs on {cores} cores: wall {minutes} min {seconds_left:02d} s ({wall:.0f} s)")
    for r, v in sorted(seconds.items(), key=lambda kv: -sum(kv[1])):
        print(f"  {r:<14} {len(v):4d} jobs  {sum(v):7.0f} s  ({sum(v) / len(v):5.1f} s each)")
    print(
        f"job seconds {total:.0f} over {wall:.0f} s x {cores} cores: the cores were busy "
        f"{100 * total / max(wall * cores, 1e-9):.1f}% of the time (timestamps have 1 s resolution)"
    )
    print(
        f"target: within 30 min: {'yes' if wall <= 1800 else 'NO'}; "
        f"the further goal, half of that (15 min): {'yes' if wall <= 900 else 'NO'}"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--log", help="a finished run's .snakemake/log/*.snakemake.log: report only")
    p.add_argument("--keep", help="run in this folder (created; must not exist) and keep it")
    p.add_argument("--rev", default="HEAD")
    a = p.parse_args()
    if a.log:
        report(Path(a.log).read_text())
        return
    where = Path(a.keep) if a.keep else Path(tempfile.mkdtemp(prefix="negatives_default_run_")) / "run"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(where)], check=True)
    subprocess.run(["git", "-C", str(where), "checkout", "-q", a.rev], check=True)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    t0 = time.perf_counter()
    subprocess.run(
        [str(Path(sys.executable).parent / "snakemake"), "--cores", "all"],
        cwd=where,
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wall = time.perf_counter() - t0
    log = max((where / ".snakemake" / "log").glob("*.snakemake.log"), key=lambda f: f.stat().st_mtime)
    rev = subprocess.run(
        ["git", "-C", str(where), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    print(f"snakemake --cores all in a fresh clone of {rev} ({where})")
    report(log.read_text(), wall)
    if not a.keep:
        shutil.rmtree(where.parent)


if __name__ == "__main__":
    main()
