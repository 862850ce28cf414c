"""The before/after comparisons of benchmarks/: bit_identity.py's verdicts
(bit for bit, and up to float order with ``--tolerance``) on made-up
checkpoints, and band_overhead.py ``--before`` raced against a revision at a
tiny scale."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
from bit_identity import differences, relative, within_tolerance  # noqa: E402 (benchmarks/ put on the path first)


def _run(scale=1.0, loss=1.0, lr=0.06, knn=50.0, shape=(4,)):
    """A finished run's checkpoint: a float and an integer tensor, a two-epoch log."""
    w = torch.tensor([0.5, -2.0, 1.0, 0.25])[: shape[0]] * scale
    model = {"encoder_q.w": w, "queue.ptr": torch.tensor(3)}
    log = [
        {"loss": 4.0 * loss, "negatives_kept": 64.0, "knn_top1": knn, "lr": lr},
        {"loss": 3.0, "negatives_kept": 64.0, "knn_top1": 55.0, "lr": lr / 2},
    ]
    return {"model": model, "log": log}


def test_relative_difference_is_over_the_largest_magnitude():
    assert relative(torch.tensor([2.0, -4.0]), torch.tensor([2.0, -3.9])) == pytest.approx(0.1 / 4)
    assert relative([3.0, 1e-9], [3.0, 2e-9]) == pytest.approx(1e-9 / 3)  # a value near 0 does not explode
    assert relative(torch.zeros(3), torch.zeros(3)) == 0.0
    assert relative(torch.zeros(3), torch.tensor([0.0, 1e-30, 0.0])) == float("inf")


def test_identical_runs_have_no_differences():
    assert differences(_run(), _run()) == []


@pytest.mark.parametrize(
    ("after", "ok", "named"),
    [
        (_run(scale=1 + 5e-6), True, "tensor 5.0e-06 (encoder_q.w)"),
        (_run(scale=1 + 5e-5), False, "tensor 5.0e-05 (encoder_q.w)"),
        (_run(loss=1 + 5e-5), True, "per-epoch loss 5.0e-05"),
        (_run(loss=1 + 5e-4), False, "per-epoch loss 5.0e-04"),
        (_run(knn=51.0), True, "log knn_top1: [50.0, 55.0] vs [51.0, 55.0]"),  # shown, does not fail
        (_run(lr=0.07), False, "log lr differs"),
        (_run(shape=(3,)), False, "tensor encoder_q.w: torch.float32[4] vs torch.float32[3]"),
    ],
)
def test_tolerance_passes_float_order_only(after, ok, named):
    before = _run()
    assert differences(before, after)  # not bit-identical
    passed, line = within_tolerance(before, after)
    assert passed is ok
    assert named in line


def test_an_integer_tensor_off_by_one_is_beyond_tolerance():
    after = _run()
    after["model"]["queue.ptr"] = torch.tensor(4)
    passed, line = within_tolerance(_run(), after)
    assert not passed and "(queue.ptr)" in line


def test_bit_identity_refuses_a_policy_outside_its_grid_before_training():
    r = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bit_identity.py"), "HEAD", "--policies", "all", "keep[1_2)"],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2
    assert "--policies: keep[1_2) not in the grid" in r.stderr.splitlines()[-1]
    assert "training" not in r.stdout


def _band_overhead(*args):
    return subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "band_overhead.py"),
            "--queue",
            "32",
            "--batch",
            "16",
            "--steps",
            "1",
            "--warmup",
            "0",
            *args,
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )


#: the revision whose API benchmarks/band_overhead.py's revision side speaks
REVISION = "fbecef0"


@pytest.mark.skipif(
    subprocess.run(["git", "-C", str(ROOT), "cat-file", "-e", f"{REVISION}^{{commit}}"], check=False).returncode != 0,
    reason=f"revision {REVISION} is not in this clone",
)
def test_band_overhead_races_each_policy_against_a_revision():
    head = REVISION
    policies = ["all", "keep[90_100)", "mochi[8_4_2]", "drop-same-class@replace"]
    r = _band_overhead("--before", head, "--rounds", "2", "--policies", *policies)
    assert r.returncode == 0, r.stderr
    rows = {
        line.split()[0]: line.split()[1:]
        for line in r.stdout.splitlines()
        if line.split()[:1] and line.split()[0] in policies
    }
    assert list(rows) == policies
    for name, (img_before, img_after, ratio, spread, sel_before, sel_after) in rows.items():
        low, high = (float(v) for v in spread.rstrip("x").split("-"))
        assert float(img_before) > 0 and float(img_after) > 0 and low <= float(ratio.rstrip("x")) <= high, name
        assert float(sel_before) >= 0 and float(sel_after) >= 0
    assert f"slowest against {head} (median of 2 round(s) of 1 steps)" in r.stdout


def test_band_overhead_refuses_an_unknown_revision_or_policy_in_one_line():
    r = _band_overhead("--before", "no-such-revision", "--policies", "all")
    assert r.returncode == 2 and "--before: cannot read revision 'no-such-revision'" in r.stderr.splitlines()[-1]
    r = _band_overhead("--policies", "all", "keep[nonsense)")
    assert r.returncode == 2 and "--policies: 'keep[nonsense)' is no policy of the working tree" in r.stderr
    assert "policy" not in r.stdout


def test_tolerances_can_be_set():
    after = _run(scale=1 + 5e-5)
    assert not within_tolerance(_run(), after)[0]
    assert within_tolerance(_run(), after, tensors=1e-4)[0]
    assert not within_tolerance(_run(), _run(loss=1 + 5e-4), tensors=1e-4)[0]
    assert within_tolerance(_run(), _run(loss=1 + 5e-4), loss=1e-3)[0]
