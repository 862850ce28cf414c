"""negatives.runtime.atomic: outputs appear whole or not at all, and a file
damaged after it was written is named when it is read."""

import errno
import json
from pathlib import Path

import pytest

from negatives.runtime import atomic
from negatives.runtime.atomic import WriteFailed, atomic_write, check_path, check_writable, verify, verify_existing


def test_writes_through_a_hidden_temporary_file_and_creates_the_folder(tmp_path):
    out = tmp_path / "new" / "probe.json"
    seen = []

    def write(tmp):
        seen.append(tmp)
        assert not out.exists()  # nothing at the final path while writing
        tmp.write_text("{}\n")

    assert atomic_write(out, write) == out
    assert out.read_text() == "{}\n"
    assert seen[0].parent == out.parent and seen[0].name.startswith(".") and seen[0].name.endswith(".tmp")
    assert sorted(p.name for p in out.parent.iterdir()) == [".probe.json.sha256", "probe.json"]
    record = json.loads(check_path(out).read_text())
    assert record == {"bytes": 3, "sha256": "ca3d163bab055381827226140568f3bef7eaac187cebd76878e0b63e9e442356"}


def test_a_failed_write_leaves_the_old_file_and_no_temporary_one(tmp_path):
    out = tmp_path / "classes.tsv"

    def write(tmp):
        tmp.write_text("half of the ne")
        raise KeyboardInterrupt  # a killed job, say

    atomic_write(out, lambda tmp: tmp.write_text("old\n"))
    with pytest.raises(KeyboardInterrupt):
        atomic_write(out, write)
    assert out.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".classes.tsv.sha256", "classes.tsv"]
    assert verify(out, "class list", "rebuild it") == out  # its check file is still the old file's


def test_a_full_disk_is_one_error_naming_the_path_and_leaves_nothing_behind(tmp_path):
    out = tmp_path / "pairs.parquet"
    atomic_write(out, lambda tmp: tmp.write_bytes(b"previous"))

    def write(tmp):
        tmp.write_bytes(b"half")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(WriteFailed, match=rf"cannot write {out}: the disk is full .*; free some space there"):
        atomic_write(out, write)
    assert out.read_bytes() == b"previous" and verify(out, "pairs table", "rebuild it")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".pairs.parquet.sha256", "pairs.parquet"]


def test_other_errors_pass_through_unchanged(tmp_path):
    def write(tmp):
        raise OSError(errno.EIO, "Input/output error")

    with pytest.raises(OSError) as e:
        atomic_write(tmp_path / "x", write)
    assert type(e.value) is OSError and e.value.errno == errno.EIO


def test_verify_names_a_truncated_or_altered_file_and_how_to_rebuild_it(tmp_path):
    out = tmp_path / "probe.json"
    atomic_write(out, lambda tmp: tmp.write_text('{"linear_top1": 51.25}'))
    out.write_text('{"linear_top1": 5')
    with pytest.raises(
        ValueError,
        match=rf"{out} is damaged: 17 bytes, but 22 were written \(probe.json\); "
        r"delete it and evaluate it \(or delete \.probe\.json\.sha256",
    ):
        verify(out, "probe.json", "evaluate it")
    out.write_text('{"linear_top1": 91.25}')  # same length, other bytes
    with pytest.raises(ValueError, match="its SHA-256 differs from the one written with it"):
        verify(out, "probe.json", "evaluate it")
    verify(out, "probe.json", "evaluate it", full=False)  # the length alone cannot tell
    check_path(out).write_text("{")
    with pytest.raises(ValueError, match=r"\.probe\.json\.sha256, the check file of .*probe\.json, is damaged"):
        verify(out, "probe.json", "evaluate it")
    check_path(out).unlink()  # no check file: read as it is
    assert verify(out, "probe.json", "evaluate it") == out
    with pytest.raises(FileNotFoundError, match=r"nowhere\.json: no probe.json there; evaluate it"):
        verify(tmp_path / "nowhere.json", "probe.json", "evaluate it")


def test_a_flipped_byte_that_torch_still_loads_is_refused(tmp_path):
    torch = pytest.importorskip("torch")
    out = tmp_path / "checkpoint.pt"
    atomic.atomic_torch_save({"w": torch.full((256,), 1.0)}, out)
    raw = bytearray(out.read_bytes())
    at = raw.find(b"\x00\x00\x80\x3f" * 4)  # the float 1.0, little-endian
    raw[at + 3] = 0x40  # 1.0 -> 4.0
    out.write_bytes(bytes(raw))
    check_path(out).rename(tmp_path / "kept")
    assert torch.load(out, weights_only=False)["w"][0] == 4.0  # torch alone sees nothing wrong
    (tmp_path / "kept").rename(check_path(out))
    with pytest.raises(ValueError, match="checkpoint.pt is damaged: its SHA-256 differs"):
        atomic.torch_load(out, "finished run's checkpoint", "train it again")


def test_planning_checks_the_inputs_that_exist(tmp_path, monkeypatch):
    small, big = tmp_path / "probe.json", tmp_path / "pairs.parquet"
    atomic_write(small, lambda tmp: tmp.write_text("{}"))
    atomic_write(big, lambda tmp: tmp.write_bytes(b"x" * 64))
    paths = [small, big, tmp_path / "not-yet-built.json"]
    assert verify_existing(paths) == [str(p) for p in paths]
    monkeypatch.setattr(atomic, "PLAN_HASH_BYTES", 32)
    big.write_bytes(b"y" * 64)  # changed, same length, above the hashing size
    assert verify_existing(paths)
    small.write_text("[]")  # changed, same length, hashed
    with pytest.raises(ValueError, match=f"{small} is damaged: its SHA-256 differs"):
        verify_existing(paths)


def test_check_writable_tries_a_file_and_measures_the_free_space(tmp_path, monkeypatch):
    check_writable(tmp_path / "new" / "deeper" / "probe.json")
    assert list(tmp_path.iterdir()) == []  # the trial file is gone, no folder made
    with pytest.raises(WriteFailed, match=rf"{tmp_path} has \d+ MiB free, but .*probe.json needs about "):
        check_writable(tmp_path / "probe.json", need_bytes=1 << 60)

    def read_only(self, *a, **k):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(Path, "touch", read_only)
    with pytest.raises(WriteFailed, match=rf"{tmp_path} is not writable \(Read-only file system\), so "):
        check_writable(tmp_path / "probe.json")
