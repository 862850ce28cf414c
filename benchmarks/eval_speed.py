"""Seconds per evaluation, before and after the speed work, side by side.

    python benchmarks/eval_speed.py --data /tmp/data/data.pt --checkpoints RUN/checkpoint.pt ... [--before REV]

Runs ``evaluate_checkpoint`` of the revision ``--before`` and of the working
tree alternately on the same checkpoints (``--repeats`` rounds), with the
config's ``evaluate`` settings (``--before`` defaults to HEAD: the working
tree's change against the last commit; a revision older than the
checkpoints' settings cannot read them, and says so), and prints the median seconds of each, their
ratio, and the difference of every accuracy.  Both share the process, so the
one-off import cost of torch's optimiser machinery (about 2 s, paid by
whichever runs first) is excluded by a warm-up evaluation.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _before import ROOT, load_before  # noqa: E402

from negatives.config_files import read_config
from negatives.evaluation.probes import evaluate_checkpoint  # noqa: E402

KEYS = ("linear_top1", "linear_top5", "fewshot_top1", "fewshot_top5", "knn_top1", "knn_top5")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True)
    p.add_argument("--checkpoints", nargs="+", required=True)
    p.add_argument("--before", default="HEAD")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--config", default=str(ROOT / "config.yaml"))
    args = p.parse_args()
    for f in (args.data, *args.checkpoints):
        if not Path(f).is_file():
            p.error(f"no such file: {f}")
    settings = read_config(args.config)["evaluate"]
    torch.set_num_threads(int(settings.get("threads") or 1))
    import importlib

    try:
        before = load_before(args.before)
    except subprocess.CalledProcessError as e:
        p.error(f"cannot read revision {args.before!r}: {e.stderr.decode().strip()}")
    old = importlib.import_module(before.__name__ + ".evaluate")
    impls = {"before": old.evaluate_checkpoint, "after": evaluate_checkpoint}
    out = Path(tempfile.mkdtemp()) / "probe.json"
    impls["after"](args.checkpoints[0], args.data, settings, out)  # warm-up: one-off imports
    try:
        impls["before"](args.checkpoints[0], args.data, settings, out)
    except (ValueError, KeyError, TypeError) as e:
        p.error(
            f"revision {args.before} cannot evaluate {args.checkpoints[0]} with this config's settings "
            f"(its code is older than they are: {e}); pick a newer --before"
        )
    times = {k: [] for k in impls}
    results = {k: {} for k in impls}
    for _ in range(args.repeats):
        for ckpt in args.checkpoints:
            for name, f in impls.items():
                t0 = time.perf_counter()
                results[name][ckpt] = f(ckpt, args.data, settings, out)
                times[name].append(time.perf_counter() - t0)
    b, a = statistics.median(times["before"]), statistics.median(times["after"])
    print(
        f"seconds per evaluation (median of {len(times['after'])}): before {b:.2f}  after {a:.2f}  "
        f"speed-up {b / a:.2f}x"
    )
    print(f"{'checkpoint':<50}" + "".join(f"{k:>14}" for k in KEYS))
    for ckpt in args.checkpoints:
        rb, ra = results["before"][ckpt], results["after"][ckpt]
        print(f"{ckpt[-50:]:<50}" + "".join(f"{ra[k]:>7.2f}({ra[k] - rb[k]:+.2f})" for k in KEYS))
    worst = max(abs(results["after"][c][k] - results["before"][c][k]) for c in args.checkpoints for k in KEYS)
    print(f"largest accuracy change: {worst:.2f} pt")


if __name__ == "__main__":
    main()
