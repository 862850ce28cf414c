"""Speed only means bit-identical.  A key marked ``speed_only`` in the config
schema changes how fast a job runs, never a bit of what it writes: each one
is shown so here, across a change in the middle of a run where a job has a
middle.  A key that is not bit-identical is not marked: it is part of the
run (a resume with another value is refused, and the workflow retrains a
finished run for it).

Speed only:

* ``evaluate.threads``: the same checkpoint evaluated with 1 and 2 threads
  gives the same ``probe.json``, byte for byte, and the same features and
  scores behind it (an evaluation has no middle: it is not resumed);
* ``jobs_per_gpu``: only the number of GPU lock slots (which free GPU a job
  locks; the numbers never read it); a run stopped mid-epoch and resumed
  with another value ends with the uninterrupted run's weights.

Part of the run, measured on CPU (torch 2.14, 2 threads):

* ``pretrain.threads``: 2 threads sum a convolution's weight gradient, a
  channels-last batch-norm and whole-tensor reductions in other pieces than
  1 thread (torch's deterministic mode and turning oneDNN off leave the
  batch-norm and the reductions so), so weights differ in the last bits;
* ``pretrain.processes`` and ``pretrain.nodes``: the processes of a run are a
  world of ``processes x nodes`` (where they run does not enter the numbers),
  each backpropagates its slice of the batch and the gradients are averaged
  over the world, another order of additions than one backward over the whole
  batch: equal within float rounding (tests/runtime/test_distributed.py), not bit for bit;
* ``pretrain.compile``: inductor's fused kernels change the last bits.
"""

from __future__ import annotations

import json
import os
import signal

import pytest
import torch

from negatives.cli import main
from negatives.defaults import speed_only
from negatives.methods.moco import MoCo
from negatives.runtime.checkpoint import Preempted, load_verified
from negatives.training.pretrain import pretrain
from negatives.training.settings import load_encoder, meta_differences

SETTINGS = dict(
    backbone="small-cnn", width=4, dim=8, epochs=3, batch_size=16, queue_size=32, bn_splits=2, knn_monitor=0, threads=1
)
POLICY = "drop[90_100)"
#: train_log columns that measure time, not the run
TIMING = {"images_per_s", "seconds"}


def test_the_keys_marked_speed_only_are_those_shown_here():
    """A key newly marked speed only needs its bit-identity test in this file."""
    assert speed_only("pretrain") == ()
    assert speed_only("evaluate") == ("threads",)
    assert speed_only() == ("jobs_per_gpu",)


@pytest.fixture
def keep_threads():
    """Evaluation sets the process's torch threads: give them back."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def _assert_same_run(a: dict, b: dict) -> None:
    """Two finished checkpoints hold the same run, bit for bit: every tensor of
    the model and every number of the log but its timings."""
    assert a["model"].keys() == b["model"].keys()
    differ = [k for k in a["model"] if not torch.equal(a["model"][k], b["model"][k])]
    assert not differ, f"tensors differ: {differ}"
    assert all(torch.equal(a["encoder"][k], b["encoder"][k]) for k in a["encoder"])
    numbers = [
        json.dumps([{k: v for k, v in row.items() if k not in TIMING} for row in ckpt["log"]]) for ckpt in (a, b)
    ]  # JSON: exact floats, NaN equal to NaN
    assert numbers[0] == numbers[1]


# ------------------------------------------------------------ evaluate.threads


@pytest.fixture(scope="module")
def trained(data_path, tmp_path_factory):
    out = tmp_path_factory.mktemp("trained")
    return pretrain(data_path, "moco", POLICY, 0.2, 0, {**SETTINGS, "epochs": 1}, out, log=lambda m: None)


@pytest.mark.parametrize("probe", ["fast", pytest.param("faithful", marks=pytest.mark.slow)])  # faithful: +40 s
def test_evaluate_threads_give_the_same_probe_json(tmp_path, data_path, trained, keep_threads, probe):
    from negatives.evaluation.probes import evaluate_checkpoint

    settings = {
        "probe": probe,
        "knn_k": 5,
        "fewshot_labels_per_class": 2,
        "faithful": {"epochs": 2, "batch_size": 16, "milestones": [1]},
    }
    written = {}
    for threads in (1, 2):
        evaluate_checkpoint(trained, data_path, {**settings, "threads": threads}, tmp_path / f"{threads}.json")
        written[threads] = json.loads((tmp_path / f"{threads}.json").read_text())
    # every number and record bit for bit (JSON writes floats exactly), but ran_with, which says how it ran
    assert [written[t].pop("ran_with") for t in (1, 2)] == [
        {"device": "cpu", "threads": 1},
        {"device": "cpu", "threads": 2},
    ]
    assert json.dumps(written[1]) == json.dumps(written[2]), (written[1], written[2])
    assert written[1]["linear_top1"] is not None


def test_evaluate_threads_give_the_same_features_and_scores(data_path, trained, keep_threads):
    """Below the percentages of probe.json: the features, the linear probe's
    and the kNN's scores are the same bits with 1 and 2 threads (a tie in an
    accuracy could hide a difference)."""
    from negatives.data import load_prepared
    from negatives.evaluation.probes import linear_probe
    from negatives.features import extract_features, knn_classify

    encoder, _ = load_encoder(trained)
    data = load_prepared(data_path)
    got = {}
    for threads in (1, 2):
        torch.set_num_threads(threads)
        train = extract_features(encoder, data["train_images"], data["mean"], data["std"])
        test = extract_features(encoder, data["test_images"], data["mean"], data["std"])
        got[threads] = (
            train,
            test,
            linear_probe(train, data["train_labels"], test, 10),
            knn_classify(train, data["train_labels"], test, 10, k=5),
        )
    assert all(torch.equal(a, b) for a, b in zip(got[1], got[2]))


# ---------------------------------------------------------------- jobs_per_gpu


def _stop_at(monkeypatch, call: int) -> None:
    """SIGTERM to this process at MoCo's ``call``-th forward: the trainer saves
    last.pt at the next step boundary and raises Preempted."""
    calls, forward = [0], MoCo.forward

    def counting(self, *args, **kwargs):
        calls[0] += 1
        if calls[0] == call:
            os.kill(os.getpid(), signal.SIGTERM)
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(MoCo, "forward", counting)


def _cli_pretrain(data_path, out, jobs_per_gpu: int) -> int:
    return main(
        [
            "pretrain",
            "--data",
            str(data_path),
            "--policy",
            POLICY,
            "--temperature",
            "0.2",
            "--seed",
            "0",
            "--settings",
            json.dumps(SETTINGS),
            "--jobs-per-gpu",
            str(jobs_per_gpu),
            "--out",
            str(out),
        ]
    )


def test_jobs_per_gpu_changed_mid_epoch_leaves_the_run_bit_identical(tmp_path, data_path, monkeypatch, capsys):
    """``jobs_per_gpu`` is read by two things only: the GPU locks
    (:mod:`negatives.runtime.gpus`: how many jobs may hold one GPU, so which
    free GPU a job locks) and a config check.  Which of a machine's GPUs a job
    gets already varies with what else runs there; sharing one does not
    change a kernel's result (cuDNN picks its algorithms by heuristics, not by
    timing them, as ``torch.backends.cudnn.benchmark`` is left off).  On CPU:
    a run stopped mid-epoch with 1 and resumed with 3 is the run straight
    through with 1."""
    monkeypatch.setenv("NEGATIVES_JOBS_PER_GPU", "1")  # main() sets it: put back after the test
    assert _cli_pretrain(data_path, tmp_path / "straight", 1) == 0
    run = tmp_path / "run"
    with monkeypatch.context() as m:
        _stop_at(m, 6)  # epoch 1, its 2nd step
        with pytest.raises(Preempted):
            _cli_pretrain(data_path, run, 1)
    state = load_verified(run / "last.pt")
    assert (state["epoch"], state["step_in_epoch"]) == (1, 2)
    assert _cli_pretrain(data_path, run, 3) == 0
    assert "resuming from" in capsys.readouterr().out
    _assert_same_run(
        torch.load(tmp_path / "straight" / "checkpoint.pt", weights_only=False),
        torch.load(run / "checkpoint.pt", weights_only=False),
    )


def test_jobs_per_gpu_changed_at_an_epoch_boundary_leaves_the_run_bit_identical(tmp_path, data_path, monkeypatch):
    monkeypatch.setenv("NEGATIVES_JOBS_PER_GPU", "1")
    assert _cli_pretrain(data_path, tmp_path / "straight", 1) == 0
    run = tmp_path / "run"
    with monkeypatch.context() as m:
        _stop_at(m, 4)  # epoch 0's last step: stops before epoch 1's first
        with pytest.raises(Preempted):
            _cli_pretrain(data_path, run, 2)
    assert load_verified(run / "last.pt")["step_in_epoch"] == 0
    assert _cli_pretrain(data_path, run, 1) == 0
    _assert_same_run(
        torch.load(tmp_path / "straight" / "checkpoint.pt", weights_only=False),
        torch.load(run / "checkpoint.pt", weights_only=False),
    )


# ------------------------------------------------- not speed only: part of the run


class Killed(Exception):
    pass


def _kill_after_epoch_1(message: str) -> None:
    if message.startswith("epoch   1"):
        raise Killed


@pytest.mark.parametrize("key, value", [("threads", 2), ("compile", True)])
def test_a_resume_with_other_threads_or_compile_is_refused_naming_the_key(tmp_path, data_path, key, value):
    with pytest.raises(Killed):
        pretrain(data_path, "moco", POLICY, 0.2, 0, SETTINGS, tmp_path, log=_kill_after_epoch_1)
    with pytest.raises(
        ValueError,
        match=rf"interrupted run of other settings or data \(pretrain\.{key}: {SETTINGS.get(key, False)!r} "
        rf"-> {value!r}\)",
    ):
        pretrain(data_path, "moco", POLICY, 0.2, 0, {**SETTINGS, key: value}, tmp_path, log=lambda m: None)
    assert not (tmp_path / "checkpoint.pt").exists()
    pretrain(data_path, "moco", POLICY, 0.2, 0, SETTINGS, tmp_path, log=lambda m: None)  # set back: it goes on
    assert (tmp_path / "checkpoint.pt").exists()


@pytest.mark.parametrize("key", ["threads", "processes", "nodes", "compile"])
def test_the_settings_that_change_the_last_bits_are_differences_of_a_run(key):
    """What a resume compares: processes and nodes as threads and compile
    (a resume with another process count is refused by each process of the
    run; tests/runtime/test_distributed.py starts one)."""
    saved = {"seed": 0, "settings": {"threads": 1, "processes": 1, "nodes": 1, "compile": False}}
    now = {**saved, "settings": {**saved["settings"], key: 2 if key != "compile" else True}}
    assert meta_differences(saved, now) == [f"pretrain.{key}: {saved['settings'][key]!r} -> {now['settings'][key]!r}"]
