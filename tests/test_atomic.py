"""negatives.atomic: outputs appear whole or not at all."""

import pytest

from negatives.runtime.atomic import atomic_write


def test_writes_through_a_hidden_temporary_file_and_creates_the_folder(tmp_path):
    out = tmp_path / "new" / "probe.json"
    seen = []

    def write(tmp):
        seen.append(tmp)
        assert not out.exists()                       # nothing at the final path while writing
        tmp.write_text("{}\n")

    assert atomic_write(out, write) == out
    assert out.read_text() == "{}\n"
    assert seen[0].parent == out.parent and seen[0].name.startswith(".") and seen[0].name.endswith(".tmp")
    assert sorted(p.name for p in out.parent.iterdir()) == ["probe.json"]


def test_a_failed_write_leaves_the_old_file_and_no_temporary_one(tmp_path):
    out = tmp_path / "classes.tsv"
    out.write_text("old\n")

    def write(tmp):
        tmp.write_text("half of the ne")
        raise KeyboardInterrupt                        # a killed job, say

    with pytest.raises(KeyboardInterrupt):
        atomic_write(out, write)
    assert out.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["classes.tsv"]
