"""benchmarks/gpu_checks.sh, the one command for a lent GPU machine, in its
CPU smoke mode: the same benchmarks with tiny settings, so that a renamed
option or a broken import shows here and not in a short, costly GPU lease."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_checks_smoke_runs_every_step(tmp_path):
    env = {**os.environ, "NEGATIVES_GPU_PYTHON": sys.executable}
    run = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_checks.sh"), "--smoke", str(tmp_path)],
                         env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "0 failed step(s)" in run.stdout
    texts = {name: (tmp_path / f"{name}.txt").read_text() for name in ("env", "epoch", "throughput", "bands")}
    assert "torch" in texts["env"]
    assert "images/s, epoch" in texts["epoch"]
    assert "ours / reference, each at its best setting" in texts["throughput"]
    assert "worst overhead over all" in texts["bands"] and "mochi[16_8_4]" in texts["bands"]
    for name, text in texts.items():
        assert f"==> {name}: exit 0" in text
