"""One GPU per training process: on a (faked) machine with two GPUs, two
processes get different devices, a third waits until one is given back (or,
with a time limit, fails saying why), and a killed holder frees its GPU."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch
from conftest import ROOT

from negatives.runtime import gpus

# a process that asks for one of 2 GPUs, says which it got, and holds it
# until its stdin closes
HOLDER = textwrap.dedent("""
    import sys
    from negatives.runtime import gpus
    timeout = None if sys.argv[2] == "none" else float(sys.argv[2])
    lease = gpus.acquire(2, lock_dir=sys.argv[1], timeout=timeout, log=lambda m: print(m, flush=True))
    print(f"got {lease.index} {lease.ident}", flush=True)
    sys.stdin.read()
""")


def _holder(lock_dir, timeout="none", env=None):
    env = {
        **os.environ,
        **(env or {}),
        "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
    }
    return subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(lock_dir), timeout],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def _line(proc, seconds=60.0) -> str | None:
    """The next line the process prints, or None if none comes within ``seconds``."""
    ready, _, _ = select.select([proc.stdout], [], [], seconds)
    return proc.stdout.readline().strip() if ready else None


def _stop(*procs):
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait(timeout=30)


def test_two_processes_get_different_gpus_and_a_third_waits(tmp_path):
    a, b = _holder(tmp_path), _holder(tmp_path)
    c = None
    try:
        first, second = _line(a), _line(b)
        assert {first, second} == {"got 0 0", "got 1 1"}
        c = _holder(tmp_path)
        assert _line(c) == f"all 2 GPUs are taken by other processes ({tmp_path}); waiting for one to be free"
        assert _line(c, 2.0) is None  # still waiting
        a.stdin.close()  # a gives its GPU back by exiting
        a.wait(timeout=30)
        assert _line(c) == first  # c now holds the GPU a gave back
        assert b.poll() is None  # b kept its own
    finally:
        _stop(a, b, *([c] if c else []))


def test_a_killed_holder_frees_its_gpu_and_the_freed_one_is_taken(tmp_path):
    a = _holder(tmp_path)
    b = _holder(tmp_path)
    c = None
    try:
        first, second = _line(a), _line(b)
        assert {first, second} == {"got 0 0", "got 1 1"}
        os.kill(a.pid, signal.SIGKILL)  # no clean-up runs: the kernel drops the lock
        a.wait(timeout=30)
        c = _holder(tmp_path)
        assert _line(c) == first  # the GPU a held, not b's
    finally:
        _stop(a, b, *([c] if c else []))


def test_a_third_with_a_time_limit_fails_saying_what_to_do(tmp_path):
    a, b = _holder(tmp_path), _holder(tmp_path)
    try:
        assert {_line(a), _line(b)} == {"got 0 0", "got 1 1"}
        start = time.monotonic()
        c = _holder(tmp_path, timeout="1")
        _, err = c.communicate(timeout=60)
        assert c.returncode == 1 and time.monotonic() - start < 30
        assert "NoFreeGPU: all 2 GPUs stayed taken for 1 s" in err
        assert "gpu-0.lock" in err and "snakemake --resources gpu=N" in err and "NEGATIVES_GPU_WAIT" in err
    finally:
        _stop(a, b)


def test_locks_are_named_after_cuda_visible_devices(tmp_path):
    env = {"CUDA_VISIBLE_DEVICES": "5,7"}
    a, b = _holder(tmp_path, env=env), _holder(tmp_path, env=env)
    try:
        assert {_line(a), _line(b)} == {"got 0 5", "got 1 7"}
        assert sorted(p.name for p in tmp_path.iterdir()) == ["gpu-5.lock", "gpu-7.lock"]
    finally:
        _stop(a, b)


def test_claim_maps_cuda_to_the_leased_index_and_leaves_other_devices(tmp_path, monkeypatch):
    monkeypatch.setattr(gpus, "_LEASE", None)
    assert gpus.claim(torch.device("cpu")) == torch.device("cpu")
    assert gpus.claim(torch.device("cuda", 1)) == torch.device("cuda", 1)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    other = gpus.acquire(2, lock_dir=tmp_path, log=lambda m: None)  # another holder has GPU 0
    said = []
    try:
        device = gpus.claim(torch.device("cuda"), log=said.append, lock_dir=tmp_path, count=2)
        assert device == torch.device("cuda", 1)
        assert said == [f"using GPU cuda:1 (lock {tmp_path / 'gpu-1.lock'})"]
        assert gpus.claim(torch.device("cuda"), log=said.append, lock_dir=tmp_path, count=2) == device
        assert len(said) == 1  # one lease per process
    finally:
        gpus.release()
        os.close(other.fd)
    said.clear()
    try:  # released: the next claim takes a lease anew (and says so), here the GPU the other process freed
        assert gpus.claim(torch.device("cuda"), log=said.append, lock_dir=tmp_path, count=2) == torch.device("cuda", 0)
        assert len(said) == 1
    finally:
        gpus.release()


def test_no_visible_gpu_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="no GPU is visible: set pretrain.device to 'cpu' or 'auto'"):
        gpus.acquire(0, lock_dir=tmp_path)


# ------------------------------------------------------------ GPUs shared by jobs

SLOT_HOLDER = HOLDER.replace(
    'print(f"got {lease.index} {lease.ident}", flush=True)', 'print(f"got {lease.index} {lease.path.name}", flush=True)'
)


def _slot_holder(lock_dir, slots: int):
    env = {
        **os.environ,
        "NEGATIVES_JOBS_PER_GPU": str(slots),
        "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
    }
    return subprocess.Popen(
        [sys.executable, "-c", SLOT_HOLDER, str(lock_dir), "none"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def test_jobs_share_a_gpu_up_to_its_slots_spread_over_the_gpus_first(tmp_path):
    """jobs_per_gpu 2 on 2 GPUs: four jobs hold the GPUs' first slots, then
    their second ones; a fifth waits until a slot is given back."""
    holders = []
    try:
        got = []
        for _ in range(4):  # one after the other, so the order is the slots' order
            holders.append(_slot_holder(tmp_path, 2))
            got.append(_line(holders[-1]))
        assert got == ["got 0 gpu-0.lock", "got 1 gpu-1.lock", "got 0 gpu-0.slot1.lock", "got 1 gpu-1.slot1.lock"]
        fifth = _slot_holder(tmp_path, 2)
        holders.append(fifth)
        assert _line(fifth) == (
            f"all 2 GPUs (2 jobs each) are taken by other processes ({tmp_path}); waiting for one to be free"
        )
        assert _line(fifth, 2.0) is None
        holders[2].stdin.close()  # the job in GPU 0's second slot ends
        holders[2].wait(timeout=30)
        assert _line(fifth) == "got 0 gpu-0.slot1.lock"
        assert all(h.poll() is None for i, h in enumerate(holders) if i != 2)
    finally:
        _stop(*holders)


def test_the_slots_order_spreads_jobs_over_the_gpus(tmp_path):
    order = [(i, p.name) for i, _, p in gpus.slot_paths(["3", "5"], tmp_path, 3)]
    assert order == [
        (0, "gpu-3.lock"),
        (1, "gpu-5.lock"),
        (0, "gpu-3.slot1.lock"),
        (1, "gpu-5.slot1.lock"),
        (0, "gpu-3.slot2.lock"),
        (1, "gpu-5.slot2.lock"),
    ]
    assert [p.name for _, _, p in gpus.slot_paths(["0"], tmp_path, 1)] == ["gpu-0.lock"]


def test_a_run_beside_another_trains_the_run_alone(tmp_path, fashion_root):
    """Results do not depend on how many jobs share the machine: a run trained
    while another trains beside it has the weights of the run trained alone."""
    import json

    from negatives.data import prepare

    data = prepare("fashion-mnist", fashion_root, tmp_path / "prepared")
    settings = dict(
        backbone="small-cnn",
        width=4,
        dim=8,
        epochs=2,
        batch_size=16,
        queue_size=32,
        bn_splits=2,
        knn_monitor=0,
        threads=1,
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}

    def start(out, seed):
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "negatives",
                "pretrain",
                "--data",
                str(data),
                "--policy",
                "drop[90_100)",
                "--temperature",
                "0.2",
                "--seed",
                str(seed),
                "--settings",
                json.dumps(settings),
                "--jobs-per-gpu",
                "2",
                "--out",
                str(out),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )

    alone = start(tmp_path / "alone", 0)
    assert alone.wait(timeout=300) == 0, alone.stdout.read()
    pair = [start(tmp_path / "beside", 0), start(tmp_path / "other", 1)]
    assert [p.wait(timeout=300) for p in pair] == [0, 0], [p.stdout.read() for p in pair]
    a = torch.load(tmp_path / "alone" / "checkpoint.pt", weights_only=False)
    b = torch.load(tmp_path / "beside" / "checkpoint.pt", weights_only=False)
    for name, value in a["model"].items():
        assert torch.equal(b["model"][name], value), name
    assert [r["loss"] for r in a["log"]] == [r["loss"] for r in b["log"]]
