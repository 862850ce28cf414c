"""One run across processes (gloo on CPU) equals the run in one process with
the same global batch: losses and weights within float32 rounding after
several steps, the queue's labels, indices and pointer identical, and every
rank holding the same model.  The methods' steps are run as the trainer runs
them: each rank augments its slice with the whole batch's draws, the query
encoder is wrapped in DistributedDataParallel, batch-norm running statistics
are averaged after each step."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import ROOT, fake_fashion_mnist

from negatives.data import prepare
from negatives.data.augment import MoCoV2Augment
from negatives.methods import build_method, num_candidates
from negatives.models import build_encoder
from negatives.policies import parse_policy
from negatives.runtime import distributed
from negatives.runtime.checkpoint import REQUEUE_EXIT_CODE, load_verified
from negatives.training.pretrain import pretrain
from negatives.training.settings import PretrainSettings

B, SPLITS, K, EXTRA, STEPS, SIDE = 16, 8, 32, 16, 4, 16

#: (method, policy): every family whose selection reads the whole queue or batch
CASES = [
    ("moco", "all"),
    ("moco", "keep[75_100)"),
    ("moco", "drop-same-class@replace"),
    ("moco", "ring[100->10_10_linear_50]"),
    ("moco", "hard[1_0.1]"),
    ("moco", "retain-hard[0.25]"),
    ("moco", "debiased[0.1]"),
    ("moco", "mochi[16_8_4]"),
    ("simclr", "all"),
    ("simclr", "keep[75_100)"),
    ("simclr", "hard[1_0.1]"),
    ("simclr", "mochi[8_4_2]"),
]


def _data():
    g = torch.Generator().manual_seed(0)
    n = B * STEPS
    images = torch.randint(0, 256, (n, 1, SIDE, SIDE), generator=g, dtype=torch.uint8)
    return images, torch.arange(n) % 10, torch.arange(n)


def run_steps(method: str, policy: str) -> dict:
    """``STEPS`` training steps of one run, in this process's share of the
    batch; returns the model's state, the (global) losses and kept counts."""
    world = distributed.world_size()
    torch.manual_seed(0)
    encoder = build_encoder("small-cnn", in_channels=1, width=4, dim=8, num_splits=SPLITS // world)
    recipe = parse_policy(policy)
    recipe.policy.start(1, num_candidates(method, K, B))
    settings = PretrainSettings(dim=8, queue_size=K, queue_extra=EXTRA, momentum=0.9)
    model = build_method(method, encoder, recipe, settings, 0.2, generator=torch.Generator().manual_seed(1))
    if world > 1:
        model.distribute(lambda m: distributed.data_parallel(m, torch.device("cpu")))
    opt = torch.optim.SGD(model.encoder_q.parameters(), lr=0.5, momentum=0.9)
    aug = MoCoV2Augment(SIDE, 1, [0.5], [0.25], crop_scale=(0.2, 1.0), blur=True)
    images, labels, indices = _data()
    rows = model.image_rows(B)
    losses, kept = [], []
    for step in range(STEPS):
        torch.manual_seed(100 + step)
        batch = slice(step * B, (step + 1) * B)
        x = images[batch][rows]
        x_q, x_k = aug(x, batch=B, rows=rows), aug(x, batch=B, rows=rows)
        loss, stats = model(x_q, x_k, labels[batch][rows], indices[batch][rows], progress=step / STEPS)
        opt.zero_grad()
        loss.backward()
        opt.step()
        distributed.average_buffers_(model)
        losses.append(distributed.mean_(loss.detach().clone()))
        kept.append(distributed.mean_(torch.as_tensor(stats["kept"], dtype=torch.float64).clone()))
    return {
        "state": {k: v.clone() for k, v in model.state_dict().items()},
        "losses": torch.stack(losses),
        "kept": torch.stack(kept),
    }


def _worker(rank: int, world: int, port: int, out: str) -> None:
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        results = {case: run_steps(*case) for case in CASES}
        torch.save(results, f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def single():
    torch.set_num_threads(1)
    return {case: run_steps(*case) for case in CASES}


@pytest.fixture(scope="module", params=[2, 4], ids=["2 processes", "4 processes"])
def ranks(request, tmp_path_factory):
    out = tmp_path_factory.mktemp(f"ranks{request.param}")
    mp.start_processes(
        _worker, args=(request.param, _free_port(), str(out)), nprocs=request.param, start_method="spawn"
    )
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(request.param)]


@pytest.mark.parametrize("case", CASES, ids=[f"{m} {p}" for m, p in CASES])
def test_a_run_across_processes_equals_the_run_in_one(single, ranks, case):
    one = single[case]
    for rank, result in enumerate(ranks):
        got = result[case]
        torch.testing.assert_close(got["losses"], one["losses"], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(got["kept"], one["kept"], rtol=1e-9, atol=1e-9)
        assert got["state"].keys() == one["state"].keys()
        for name, value in one["state"].items():
            if value.is_floating_point():
                torch.testing.assert_close(got["state"][name], value, rtol=1e-5, atol=1e-5, msg=name)
            else:  # queue labels, indices, pointer, retain-hard counts
                assert torch.equal(got["state"][name], value), name
        for name, value in ranks[0][case]["state"].items():
            assert torch.equal(got["state"][name], value), f"rank {rank} differs from rank 0 in {name}"


def test_one_process_is_the_identity():
    """Without a process group every collective leaves its input as it is."""
    t = torch.arange(6.0).view(3, 2)
    assert distributed.world_size() == 1 and distributed.rank() == 0
    assert distributed.gather_rows(t)[0] is t and distributed.gather_with_grad(t) is t
    assert distributed.local_rows(8) == slice(0, 8) and not distributed.any_rank(False)
    assert torch.equal(distributed.mean_(t.clone()), t)


# ------------------------------------------------------------------ the trainer

RUN = dict(
    backbone="small-cnn", width=4, dim=8, epochs=2, batch_size=16, queue_size=32, bn_splits=4, knn_monitor=0, threads=1
)


def _checkpoint(path):
    return torch.load(path, weights_only=False)


@pytest.mark.parametrize("method, policy", [("moco", "drop[90_100)"), ("simclr", "all")])
def test_pretraining_with_two_processes_equals_one(tmp_path, data_path, method, policy):
    runs = {
        n: _checkpoint(
            pretrain(data_path, method, policy, 0.2, 0, {**RUN, "processes": n}, tmp_path / str(n), log=lambda m: None)
        )
        for n in (1, 2)
    }
    one, two = runs[1], runs[2]
    for name, value in one["model"].items():
        if value.is_floating_point():
            torch.testing.assert_close(two["model"][name], value, rtol=1e-5, atol=1e-5, msg=name)
        else:
            assert torch.equal(two["model"][name], value), name
    for a, b in zip(one["log"], two["log"]):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5) and a["negatives_kept"] == b["negatives_kept"]
    assert one["meta"]["settings"]["processes"] == 1 and two["meta"]["settings"]["processes"] == 2
    assert sorted(p.name for p in (tmp_path / "2").iterdir() if not p.name.startswith(".")) == [
        "checkpoint.pt",
        "snapshots",  # the query encoder at pretrain.dynamics_epochs, written once (rank 0)
        "train_log.csv",
    ]
    snapshots = [sorted(p.name for p in (tmp_path / str(n) / "snapshots").iterdir()) for n in (1, 2)]
    assert snapshots[0] == snapshots[1] and snapshots[0][-1] == f"epoch{RUN['epochs']:04d}.pt"


LONG = {**RUN, "epochs": 4, "processes": 2}


@pytest.fixture(scope="module")
def long_data(tmp_path_factory):
    """Enough images that an epoch outlasts a signal's way to the workers."""
    root = fake_fashion_mnist(tmp_path_factory.mktemp("fmnist-long"), n_train=640, n_test=32)
    return prepare("fashion-mnist", root, tmp_path_factory.mktemp("prepared-long"))


def _cli(data, out, settings) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
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
            "0",
            "--settings",
            json.dumps(settings),
            "--out",
            str(out),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )


def _workers(parent: int) -> list[int]:
    """The spawned training processes of ``parent``."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmdline = (stat.parent / "cmdline").read_bytes()
        except OSError:
            continue
        if int(fields[1]) == parent and b"spawn_main" in cmdline:
            found.append(int(stat.parent.name))
    return sorted(found)


def _after_first_epoch(proc: subprocess.Popen, what) -> str:
    out = []
    for line in proc.stdout:
        out.append(line)
        if line.startswith("epoch   1"):
            what(proc)
            break
    out.append(proc.stdout.read())
    proc.wait(timeout=120)
    return "".join(out)


@pytest.fixture(scope="module")
def uninterrupted(long_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("uninterrupted")
    return _checkpoint(pretrain(long_data, "moco", "drop[90_100)", 0.2, 0, LONG, out, log=lambda m: None))


def test_a_stop_on_one_process_stops_all_and_the_run_resumes_to_the_same_weights(tmp_path, long_data, uninterrupted):
    run = tmp_path / "run"
    proc = _cli(long_data, run, LONG)
    said = _after_first_epoch(proc, lambda p: os.kill(_workers(p.pid)[-1], signal.SIGTERM))
    assert proc.returncode == REQUEUE_EXIT_CODE, said
    assert re.search(r"a stop on another process: saved .*last\.pt at epoch 1 step \d+", said), said
    state = load_verified(run / "last.pt")
    assert state["epoch"] == 1 and state["step_in_epoch"] > 0 and state["processes"] == 2
    with pytest.raises(ValueError, match=r"interrupted run of other settings or data \(pretrain\.processes: 2 -> 1\)"):
        pretrain(long_data, "moco", "drop[90_100)", 0.2, 0, {**LONG, "processes": 1}, run, log=lambda m: None)
    resumed = _checkpoint(pretrain(long_data, "moco", "drop[90_100)", 0.2, 0, LONG, run, log=lambda m: None))
    for name, value in uninterrupted["model"].items():
        assert torch.equal(resumed["model"][name], value), name
    assert [r["loss"] for r in resumed["log"]] == [r["loss"] for r in uninterrupted["log"]]


def test_a_killed_process_ends_the_run_and_a_rerun_finishes_it(tmp_path, long_data, uninterrupted):
    run = tmp_path / "run"
    proc = _cli(long_data, run, LONG)
    start = time.monotonic()
    said = _after_first_epoch(proc, lambda p: os.kill(_workers(p.pid)[-1], signal.SIGKILL))
    assert proc.returncode not in (0, REQUEUE_EXIT_CODE) and time.monotonic() - start < 120, said
    assert "training process 1 of 2 exited with status -9" in said, said
    assert not _workers(proc.pid) and (run / "last.pt").exists()  # nobody left waiting in a collective
    resumed = _checkpoint(pretrain(long_data, "moco", "drop[90_100)", 0.2, 0, LONG, run, log=lambda m: None))
    for name, value in uninterrupted["model"].items():
        assert torch.equal(resumed["model"][name], value), name
