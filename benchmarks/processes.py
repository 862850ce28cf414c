"""Images/s of one run trained by 1 and by 2 processes, side by side in one run.

    python benchmarks/processes.py                       # CPU: gloo, the config's MoCo at a small scale
    python benchmarks/processes.py --device cuda --processes 1 2 4 8 --batch 256 --backbone resnet18

Each layout trains the same run (``pretrain.processes`` P, the global batch
unchanged, ``pretrain.threads`` shared by the processes) through
:func:`negatives.training.pretrain.pretrain`, as the workflow's job does; a
layout's images/s is the trainer's own figure for its epochs (median), the
first epoch left out (process start, the first steps' allocations).  The
layouts take turns, ``--rounds`` times, so load on the machine hits all
alike; the medians over the rounds are printed with their ratio to one
process.  On a CPU the processes share the machine's cores, so the ratio
says what the communication costs, not a speed-up; on GPUs each process has
its own device.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from conftest import fake_fashion_mnist  # noqa: E402

from negatives.data import prepare  # noqa: E402
from negatives.training.pretrain import pretrain  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--backbone", default="small-cnn")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--images", type=int, default=2048, help="training images (an epoch is images / batch steps)")
    p.add_argument("--epochs", type=int, default=3, help="epochs per layout and round (the first is not counted)")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--policy", default="all")
    a = p.parse_args()

    splits = 8
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        root = fake_fashion_mnist(tmp / "fmnist", n_train=a.images, n_test=64)
        data = prepare("fashion-mnist", root, tmp / "prepared")
        settings = dict(
            backbone=a.backbone,
            width=16,
            dim=64,
            epochs=a.epochs,
            batch_size=a.batch,
            queue_size=8 * a.batch,
            bn_splits=splits,
            knn_monitor=0,
            threads=a.threads,
            device=a.device,
        )
        speeds: dict[int, list[float]] = {n: [] for n in a.processes}
        for r in range(a.rounds):
            for n in a.processes:
                out = tmp / f"run-{n}-{r}"
                ckpt = torch.load(
                    pretrain(data, "moco", a.policy, 0.2, 0, {**settings, "processes": n}, out, log=lambda m: None),
                    weights_only=False,
                )
                speeds[n].append(statistics.median(row["images_per_s"] for row in ckpt["log"][1:]))
    cpu = (
        next(
            (
                line.split(":", 1)[1].strip()
                for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")
            ),
            None,
        )
        if Path("/proc/cpuinfo").exists()
        else None
    )
    cpu = cpu or platform.processor() or platform.machine()
    print(
        f"# {a.device}, {os.cpu_count()} cores ({cpu}), torch {torch.__version__}; MoCo {a.policy}, {a.backbone}, "
        f"batch {a.batch}, {a.images} images, threads {a.threads} shared by the processes; "
        f"median of {a.rounds} rounds of epochs 2..{a.epochs}"
    )
    base = statistics.median(speeds[a.processes[0]])
    print(f"{'processes':>9}  {'images/s':>9}  {'vs ' + str(a.processes[0]):>6}")
    for n in a.processes:
        v = statistics.median(speeds[n])
        print(f"{n:>9}  {v:>9.1f}  {v / base:>6.2f}")


if __name__ == "__main__":
    main()
