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


def test_gpu_figure2_smoke_builds_the_figure_and_says_how_long(tmp_path):
    """benchmarks/gpu_figure2.sh --smoke: the GPU config's Figure 2 through
    snakemake, tiny and on CPU; the figure, its table, the job logs and a
    summary with the device and wall time land in the output folder."""
    sys.path.insert(0, str(ROOT / "tests"))
    from conftest import fake_fashion_mnist

    data = fake_fashion_mnist(tmp_path / "fmnist", n_train=1220, n_test=200)
    env = {**os.environ, "NEGATIVES_GPU_PYTHON": sys.executable, "NEGATIVES_FASHION_MNIST": str(data)}
    run = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_figure2.sh"), "--smoke", str(tmp_path / "out")],
                         env=env, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    out = tmp_path / "out"
    for ext in ("pdf", "png", "csv"):
        assert (out / f"fig2.{ext}").stat().st_size > 0
    summary = (out / "summary.txt").read_text()
    assert "device: CPU" in summary and "mode: smoke" in summary and "snakemake exit status: 0" in summary
    assert int(summary.split("wall time: ")[1].split(" s")[0]) > 0
    assert "fig2 -s" in summary and "--resources gpu=2 --configfile" in summary
    assert list((out / "logs").rglob("pretrain.log"))
