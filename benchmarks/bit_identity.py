"""Train a small grid at a git revision and in the working tree; check that both are bit-identical.

    python benchmarks/bit_identity.py 9dd7dc8          # every policy family, MoCo and SimCLR
    python benchmarks/bit_identity.py 9dd7dc8 --epochs 3
    python benchmarks/bit_identity.py 9dd7dc8 --policies all 'mochi[16_8_4]' --methods moco   # part of the grid
    python benchmarks/bit_identity.py 9dd7dc8 --tolerance   # equal up to float order is enough

Each side runs in its own process through the command line the workflow's rules
call (``python -m negatives prepare`` / ``pretrain``, whose arguments are the
stable contract), on the same tiny Fashion-MNIST-format dataset: a small CNN,
batch 32, K = 64 (+ 32 older keys in replace mode), a few steps.  Compared per
run: every tensor of the final checkpoint's model state (query and key
encoders, queue, labels, indices; ``torch.equal``), and the per-epoch loss,
negatives kept and kNN monitor accuracy of its log (``==``).  Timings are
ignored.  Prints one line per run and exits 1 when any run differs.

With ``--tolerance``, a run that is not bit-identical may still pass: what a
change of the order of float operations allows.  Printed for each such run:
the largest relative difference of any checkpoint tensor (its largest absolute
difference over the tensor's largest magnitude, REV's side) and of any
per-epoch loss; it passes when every tensor is within 1e-5 and every loss
within 1e-4 (``--tensor-tolerance``, ``--loss-tolerance``), and the state's
keys, shapes and dtypes and the log's learning rates are the same.  The runs
that pass this way are listed; differences in the log's negatives kept and
kNN accuracy are shown, and do not fail a run.  Small tensors drift most:
writing the loss's ``x / τ`` as ``x * (1 / τ)`` alone moves some batch-norm
biases by 1e-5 to 2e-5 relative in the 8 steps of 2 epochs.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _before import extract_src  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

#: (method, policy): every policy family, in both methods where it applies
GRID = [
    ("moco", p)
    for p in (
        "all",
        "keep[90_100)",
        "keep[0_75)",
        "keep[40_60)",
        "drop[90_100)",
        "drop[5_95)",
        "drop-same-class",
        "drop[75_100)&same-class",
        "drop[90_100)&other-class",
        "drop[90_100)@replace",
        "drop[90_100)&same-class@replace",
        "drop-same-class@replace",
        "mochi[16_8_4_1]",
        "mochi[16_8_4]",
        "ring[100->10_10_linear_50]",
        "ring[20_10]",
        "curriculum[0_100->90_100_linear]",
        "debiased[0.1]",
        "hard[1_0.1]",
        "retain-hard[0.1]",
        "retain-hard[0.25_50]",
    )
] + [
    ("simclr", p)
    for p in (
        "all",
        "keep[90_100)",
        "drop[90_100)",
        "drop-same-class",
        "drop[75_100)&same-class",
        "mochi[16_8_4_1]",
        "ring[100->10_10_linear_50]",
        "debiased[0.1]",
        "hard[1_0.1]",
    )
]

SETTINGS = {
    "backbone": "small-cnn",
    "width": 8,
    "dim": 16,
    "batch_size": 32,
    "queue_size": 64,
    "queue_extra": 32,
    "bn_splits": 2,
    "knn_monitor": 64,
    "knn_monitor_every": 1,
    "threads": 1,
    "device": "cpu",
}

#: run in each side's process: prepare the dataset, then every run of the grid
CHILD = r"""
import json, sys
from negatives.cli import main
root, work, grid, settings = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), sys.argv[4]
assert main(["prepare", "--dataset", "fashion-mnist", "--root", root, "--out", f"{work}/data"]) == 0
for i, (method, policy) in enumerate(grid):
    assert main(["pretrain", "--data", f"{work}/data/data.pt", "--method", method, "--policy", policy, "--temperature", "0.2",
          "--seed", "1", "--settings", settings, "--out", f"{work}/run{i}"]) == 0, (method, policy)
"""


def write_idx(path: Path, array: np.ndarray) -> None:
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def fake_fashion_mnist(root: Path, n_train: int = 128, n_test: int = 64) -> None:
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("t10k", n_test)):
        labels = np.arange(n) % 10
        images = rng.integers(0, 256, size=(n, 28, 28))
        images[:, :, :14] //= labels[:, None, None] + 1  # a little class structure
        write_idx(root / f"{split}-images-idx3-ubyte.gz", images)
        write_idx(root / f"{split}-labels-idx1-ubyte.gz", labels)


def run_side(src: Path, root: Path, work: Path, settings: dict, grid: list) -> None:
    env = {**os.environ, "PYTHONPATH": str(src), "OMP_NUM_THREADS": "1"}
    subprocess.run(
        [sys.executable, "-c", CHILD, str(root), str(work), json.dumps(grid), json.dumps(settings)],
        check=True,
        env=env,
        cwd=work,
        stdout=subprocess.DEVNULL,
    )


#: ``--tolerance``: the largest relative difference "beyond float order" allows, of a checkpoint tensor and of a loss
TENSOR_TOLERANCE, LOSS_TOLERANCE = 1e-5, 1e-4


def load_run(run: Path) -> dict:
    import torch

    return torch.load(run / "checkpoint.pt", map_location="cpu", weights_only=False)


def differences(x: dict, y: dict) -> list[str]:
    """What differs, bit for bit, between two finished runs' checkpoints."""
    import torch

    out = []
    if set(x["model"]) != set(y["model"]):
        out.append(f"state keys differ: {sorted(set(x['model']) ^ set(y['model']))}")
    for name in sorted(set(x["model"]) & set(y["model"])):
        if not torch.equal(x["model"][name], y["model"][name]):
            out.append(f"tensor {name}")
    for key in ("loss", "negatives_kept", "knn_top1", "lr"):
        if [r[key] for r in x["log"]] != [r[key] for r in y["log"]]:
            out.append(f"log {key}: {[r[key] for r in x['log']]} vs {[r[key] for r in y['log']]}")
    return out


def relative(a, b) -> float:
    """The largest absolute difference of ``b`` from ``a`` over ``a``'s largest
    magnitude (elementwise ratios explode where a value is near 0)."""
    import torch

    a, b = (torch.as_tensor(v).double() for v in (a, b))
    diff, scale = (b - a).abs().max().item(), a.abs().max().item()
    return diff / scale if scale else (0.0 if diff == 0 else float("inf"))


def within_tolerance(
    x: dict, y: dict, tensors: float = TENSOR_TOLERANCE, loss: float = LOSS_TOLERANCE
) -> tuple[bool, str]:
    """Whether two runs' checkpoints agree up to float order (every tensor
    within ``tensors`` relative, every per-epoch loss within ``loss``), and a
    line saying by how much (the largest tensor and loss differences)."""
    failures, notes = [], []
    if set(x["model"]) != set(y["model"]):
        failures.append(f"state keys differ: {sorted(set(x['model']) ^ set(y['model']))}")
    worst = (0.0, "-")
    for name in sorted(set(x["model"]) & set(y["model"])):
        a, b = x["model"][name], y["model"][name]
        if a.shape != b.shape or a.dtype != b.dtype:
            failures.append(f"tensor {name}: {a.dtype}{list(a.shape)} vs {b.dtype}{list(b.shape)}")
        else:
            worst = max(worst, (relative(a, b), name))
    losses = [r["loss"] for r in x["log"]], [r["loss"] for r in y["log"]]
    loss_diff = relative(*losses) if len(losses[0]) == len(losses[1]) else float("inf")
    if [r["lr"] for r in x["log"]] != [r["lr"] for r in y["log"]]:
        failures.append("log lr differs")
    for key in ("negatives_kept", "knn_top1"):
        if [r[key] for r in x["log"]] != [r[key] for r in y["log"]]:
            notes.append(f"log {key}: {[r[key] for r in x['log']]} vs {[r[key] for r in y['log']]}")
    ok = not failures and worst[0] <= tensors and loss_diff <= loss
    line = f"largest relative difference: tensor {worst[0]:.1e} ({worst[1]}), per-epoch loss {loss_diff:.1e}" + "".join(
        f"; {f}" for f in failures + notes
    )
    return ok, line


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("revision", help="the git revision to compare with (e.g. the commit before a restructure)")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--policies", nargs="+", metavar="POLICY", help="only the grid's runs of these policies")
    p.add_argument("--methods", nargs="+", choices=("moco", "simclr"), help="only the grid's runs of these methods")
    p.add_argument(
        "--tolerance",
        action="store_true",
        help="pass runs equal up to float order (tensors within --tensor-tolerance relative, "
        "per-epoch losses within --loss-tolerance), listing them",
    )
    p.add_argument(
        "--tensor-tolerance",
        type=float,
        default=TENSOR_TOLERANCE,
        metavar="REL",
        help="--tolerance: the largest relative difference of a checkpoint tensor (default %(default)g)",
    )
    p.add_argument(
        "--loss-tolerance",
        type=float,
        default=LOSS_TOLERANCE,
        metavar="REL",
        help="--tolerance: the largest relative difference of a per-epoch loss (default %(default)g)",
    )
    args = p.parse_args()
    if args.epochs < 1:
        p.error(f"--epochs must be at least 1, got {args.epochs}")
    for key in ("tensor_tolerance", "loss_tolerance"):
        if not 0 <= getattr(args, key) < float("inf"):
            p.error(f"--{key.replace('_', '-')} must be a finite number at least 0, got {getattr(args, key)}")
    unknown = sorted(set(args.policies or ()) - {policy for _, policy in GRID})
    if unknown:
        p.error(
            f"--policies: {', '.join(unknown)} not in the grid; its policies: "
            f"{' '.join(dict.fromkeys(policy for _, policy in GRID))}"
        )
    grid = [
        (m, pol)
        for m, pol in GRID
        if (not args.policies or pol in args.policies) and (not args.methods or m in args.methods)
    ]
    if not grid:
        p.error(
            f"--methods: no run of the grid has {' or '.join(args.methods)} with --policies {' '.join(args.policies)}"
        )
    try:
        before = extract_src(args.revision)
    except subprocess.CalledProcessError as e:
        p.error(f"cannot read revision {args.revision!r}: {e.stderr.decode().strip()}")
    settings = {**SETTINGS, "epochs": args.epochs}
    tmp = Path(tempfile.mkdtemp(prefix="bit_identity_"))
    root = tmp / "fashion"
    root.mkdir()
    fake_fashion_mnist(root)
    sides = {"before": (before, tmp / "before"), "after": (ROOT / "src", tmp / "after")}
    for name, (src, work) in sides.items():
        work.mkdir()
        print(f"training {len(grid)} runs with {name} ({src}) ...", flush=True)
        run_side(src, root, work, settings, grid)
    failed, close = 0, []
    for i, (method, policy) in enumerate(grid):
        x, y = (load_run(tmp / side / f"run{i}") for side in ("before", "after"))
        diff = differences(x, y)
        if not diff:
            line = "identical"
        elif args.tolerance:
            ok, line = within_tolerance(x, y, args.tensor_tolerance, args.loss_tolerance)
            failed += not ok
            close += [f"{method} {policy}"] if ok else []
            line = ("within tolerance: " if ok else "BEYOND TOLERANCE: ") + line
        else:
            failed += 1
            line = "DIFFERS: " + "; ".join(diff[:4])
        print(f"{method:7s} {policy:36s} {line}")
    print(
        f"{len(grid) - failed - len(close)} of {len(grid)} runs bit-identical (revision {args.revision} vs the "
        f"working tree; {args.epochs} epochs of {128 // SETTINGS['batch_size']} steps)"
    )
    if args.tolerance:
        print(
            f"{len(close)} equal up to float order (tensors within {args.tensor_tolerance:g}, losses within "
            f"{args.loss_tolerance:g} relative){': ' + ', '.join(close) if close else ''}; {failed} beyond"
        )
    if failed:
        print(f"the runs are kept in {tmp} (before/, after/: run<i> is the i-th line above)")
        return 1
    for folder in (tmp, before.parent):  # the runs and the revision's package
        shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
