"""A run trained by several processes stays locked while any of them lives:
the launcher holds ``.pretrain.lock`` and every worker ``.pretrain.rank<r>.lock``;
a launcher killed with SIGKILL (started in the background of a shell script,
so that nobody waits for it) leaves workers that keep the run locked, get
SIGTERM from the kernel and stop as on a preemption.  A start meanwhile is
refused with one line naming them and changes no file; once they are gone
a start resumes the run and writes ``checkpoint.pt``, once."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT, written
from test_distributed import RUN, _workers

from negatives.cli import main
from negatives.runtime import distributed
from negatives.runtime.locks import RankLock, RunLock, RunLocked
from negatives.training.settings import snapshot_epochs

SETTINGS = {**RUN, "epochs": 20, "processes": 2}  # epochs to spare after the first: it is stopped then

#: every write of a file named checkpoint.pt by any process (workers included), one pid a line
HOOK = """
import os
_replace = os.replace
def _counted(src, dst, *a, **k):
    _replace(src, dst, *a, **k)
    if os.path.basename(os.fspath(dst)) == "checkpoint.pt":
        with open(os.environ["CHECKPOINT_WRITES"], "a") as f:
            f.write(f"{os.getpid()}\\n")
os.replace = _counted
"""


def _env(tmp_path: Path) -> dict:
    hook = tmp_path / "hook"
    hook.mkdir(exist_ok=True)
    (hook / "sitecustomize.py").write_text(HOOK)
    path = os.pathsep.join([str(hook), str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])
    return {
        **os.environ,
        "PYTHONPATH": path,
        "PYTHONUNBUFFERED": "1",
        "CHECKPOINT_WRITES": str(tmp_path / "checkpoint-writes"),
    }


def _pretrain(data, out, settings=SETTINGS) -> list[str]:
    return [
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
    ]


def _in_background(command: list[str], log: Path, env: dict) -> int:
    """The pid of ``command`` started in the background of a shell script
    that ends at once (the process then belongs to nobody who waits for it)."""
    script = f"{shlex.join(command)} > {shlex.quote(str(log))} 2>&1 & echo $!"
    return int(subprocess.run(["bash", "-c", script], capture_output=True, text=True, env=env, check=True).stdout)


def _alive(pid: int) -> bool:
    """Whether ``pid`` may still hold a file: a zombie holds none (nobody may
    reap an orphan here), but a main thread that has ended shows as one while
    the process's other threads, which share its files, are still ending."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        threads = len(list(Path(f"/proc/{pid}/task").iterdir()))
    except OSError:
        return False
    return state != "Z" or threads > 1


def _wait(condition, seconds: float, what: str) -> None:
    end = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < end, f"{what} after {seconds} s"
        time.sleep(0.05)


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def _hold(lock: str, run: Path) -> subprocess.Popen:
    """Another process holding ``lock`` (``run`` or ``rank1``) of ``run``."""
    take = "RunLock(run)" if lock == "run" else "RankLock(run, 1)"
    run.mkdir(parents=True, exist_ok=True)  # a worker's launcher made it
    code = (
        f"import sys, time\nfrom negatives.runtime.locks import RankLock, RunLock\nrun = {str(run)!r}\n"
        f"with {take}:\n    print('held', flush=True)\n    time.sleep(120)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
    )
    assert proc.stdout.readline() == "held\n"
    return proc


def test_a_start_is_refused_while_any_lock_of_the_run_is_held_naming_every_holder(tmp_path, data_path, capsys):
    """The launcher's lock gone, a worker's still held: refused with exit
    status 2 and one line naming it (and the launcher when it lives too);
    the run folder unchanged, down to the lock files' bytes."""
    run = tmp_path / "run"
    worker = _hold("rank1", run)
    try:
        before = _snapshot(run)
        assert main(_pretrain(data_path, run)[3:]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("negatives pretrain: error: "), err
        assert f"is being trained by pid {worker.pid} on " in err[0] and "(lock .pretrain.rank1.lock)" in err[0]
        assert _snapshot(run) == before and not (run / RunLock.NAME).exists()  # not even the run's lock made
        other = tmp_path / "other"
        launcher, rank1 = _hold("run", other), _hold("rank1", other)  # a launcher and its worker, both alive
        try:
            with pytest.raises(RunLocked) as refused:
                with RunLock(other):
                    pass
            said = str(refused.value)
            assert f"pid {launcher.pid} on " in said and f"pid {rank1.pid} on " in said, said
            assert "(lock .pretrain.lock)" in said and "stop those processes" in said, said
        finally:
            for proc in (launcher, rank1):
                proc.kill()
                proc.wait()
        with pytest.raises(RunLocked, match=f"pid {worker.pid} .*rank1"):
            with RankLock(run, 1):
                pass
    finally:
        worker.kill()
        worker.wait()
    with RunLock(run):  # all gone: the run is free
        assert (run / RunLock.NAME).read_text().split()[0] == str(os.getpid())
    assert not (run / RunLock.NAME).exists()


def test_ranks_started_by_torchrun_are_all_refused_when_rank_0_is(tmp_path, data_path):
    """Rank 0 takes the run's lock and looks at every rank lock before the
    other ranks take theirs; they learn its answer, so none trains and
    none waits for the others."""
    run = tmp_path / "run"
    holder, procs = _hold("run", run), []
    try:
        before = _snapshot(run)
        env = {k: v for k, v in _env(tmp_path).items() if not k.startswith(("SLURM_", "RANK", "WORLD_SIZE"))}
        port = str(distributed.free_port())
        procs = [
            subprocess.Popen(
                _pretrain(data_path, run),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env={
                    **env,
                    "RANK": str(r),
                    "WORLD_SIZE": "2",
                    "LOCAL_RANK": str(r),
                    "MASTER_ADDR": "127.0.0.1",
                    "MASTER_PORT": port,
                },
            )
            for r in range(2)
        ]
        said = [p.communicate(timeout=120)[1].strip().splitlines() for p in procs]
        assert [p.returncode for p in procs] == [2, 2], said
        assert len(said[0]) == 1 and f"is being trained by pid {holder.pid} on " in said[0][0], said
        assert len(said[1]) == 1 and "rank 0 of this run was refused it" in said[1][0], said
        assert _snapshot(run) == before
    finally:
        for proc in (holder, *procs):  # a rank left waiting for the other, were it to wait
            proc.kill()
            proc.wait()


#: a launcher (holding the run's lock) whose two workers wait for a stop, as trainers do, and say which they got
LAUNCHER = """
import sys, time
from pathlib import Path
from negatives.runtime import distributed
from negatives.runtime.checkpoint import StopSignals
from negatives.runtime.locks import RunLock

def work(marks):
    with StopSignals() as stop:
        Path(marks, f"started{distributed.rank()}").touch()
        while stop.requested is None:
            time.sleep(0.02)
        Path(marks, f"stopped{distributed.rank()}").write_text(stop.requested)
    raise SystemExit(75)

if __name__ == "__main__":
    with RunLock(sys.argv[1]):                        # as pretrain does
        distributed.spawn(work, 2, (sys.argv[2],), "gloo", exit_codes=(75,), lock_dir=sys.argv[1])
"""


def test_spawned_workers_keep_the_run_locked_after_their_launcher_is_killed_and_stop(tmp_path):
    run, marks = tmp_path / "run", tmp_path / "marks"
    marks.mkdir()
    (tmp_path / "launcher.py").write_text(LAUNCHER)
    launcher = _in_background(
        [sys.executable, str(tmp_path / "launcher.py"), str(run), str(marks)], tmp_path / "launcher.log", _env(tmp_path)
    )
    workers = []
    try:
        _wait(lambda: len(list(marks.glob("started*"))) == 2, 120, "no workers started")
        workers = _workers(launcher)
        assert len(workers) == 2, workers
        for pid in workers:  # held still, so that they outlive the check below
            os.kill(pid, signal.SIGSTOP)
        os.kill(launcher, signal.SIGKILL)
        _wait(lambda: not _alive(launcher), 30, "the launcher lives")
        before = _snapshot(run)
        with pytest.raises(RunLocked) as refused:
            with RunLock(run):
                pass
        assert all(f"pid {pid} on " in str(refused.value) for pid in workers), refused.value
        assert "stop those processes" in str(refused.value) and _snapshot(run) == before
        for pid in workers:
            os.kill(pid, signal.SIGCONT)  # the kernel's SIGTERM waits for them
        _wait(lambda: not any(map(_alive, workers)), 60, "the workers live on")
        assert sorted(p.read_text() for p in marks.glob("stopped*")) == ["SIGTERM", "SIGTERM"]
        with RunLock(run):
            pass
    finally:
        for pid in [launcher, *workers]:
            if _alive(pid):
                os.kill(pid, signal.SIGCONT)
                os.kill(pid, signal.SIGKILL)


@pytest.mark.slow
def test_a_run_whose_launcher_was_killed_is_refused_until_its_workers_stop_then_resumes_once(tmp_path, data_path):
    run = tmp_path / "run"
    env = _env(tmp_path)
    writes = Path(env["CHECKPOINT_WRITES"])
    log = tmp_path / "launcher.log"
    launcher = _in_background(_pretrain(data_path, run), log, env)
    workers = []
    try:
        _wait(lambda: log.exists() and "\nepoch   1 " in "\n" + log.read_text(), 180, "no epoch trained")
        workers = _workers(launcher)
        assert len(workers) == 2, workers
        for pid in workers:
            os.kill(pid, signal.SIGSTOP)
        os.kill(launcher, signal.SIGKILL)
        _wait(lambda: not _alive(launcher), 30, "the launcher lives")

        before = _snapshot(run)
        second = subprocess.run(_pretrain(data_path, run), capture_output=True, text=True, env=env)
        assert second.returncode == 2, second.stderr
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1 and "is being trained by" in lines[0], lines
        assert all(f"pid {pid} on " in lines[0] for pid in workers), lines
        assert _snapshot(run) == before  # the refusal changed nothing

        for pid in workers:
            os.kill(pid, signal.SIGCONT)
        _wait(lambda: not any(map(_alive, workers)), 60, "the workers live on")
        assert "SIGTERM: saved" in log.read_text(), log.read_text()  # stopped as on a preemption
        assert (run / "last.pt").exists() and not (run / "checkpoint.pt").exists() and not writes.exists()

        third = subprocess.run(_pretrain(data_path, run), capture_output=True, text=True, env=env)
        assert third.returncode == 0, third.stdout + third.stderr
        assert "resuming from" in third.stdout
        final = (run / "checkpoint.pt").stat()
        assert len(writes.read_text().splitlines()) == 1
        epochs = (run / "train_log.csv").read_text().splitlines()[1:]
        assert [int(e.split(",")[0]) for e in epochs] == list(range(1, SETTINGS["epochs"] + 1))
        assert written(run) == ["checkpoint.pt", "train_log.csv"]  # no lock file left
        assert written(run / "snapshots") == [f"epoch{e:04d}.pt" for e in snapshot_epochs(None, SETTINGS["epochs"])]

        fourth = subprocess.run(_pretrain(data_path, run), capture_output=True, text=True, env=env)
        assert fourth.returncode == 2 and "the run is finished" in fourth.stderr, fourth.stderr
        after = (run / "checkpoint.pt").stat()
        assert (after.st_ino, after.st_mtime_ns) == (final.st_ino, final.st_mtime_ns)
        assert len(writes.read_text().splitlines()) == 1  # written once, by one process
    finally:
        for pid in [launcher, *workers]:
            if _alive(pid):
                os.kill(pid, signal.SIGCONT)
                os.kill(pid, signal.SIGKILL)
