"""The lock file that ./run.sh and ./test.sh install from (requirements/<platform>.txt).

Every dependency pyproject.toml names (and its `test` extra and build backend)
is in each lock, pinned with `==` to a version inside pyproject.toml's range,
with at least one sha256; and bootstrap.sh installs from the lock for this
platform with --require-hashes, from pyproject.toml's ranges elsewhere.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
BOOTSTRAP = ROOT / "workflow" / "scripts" / "bootstrap.sh"
LOCKS = sorted((ROOT / "requirements").glob("*.txt"))


def _pyproject_requirements() -> list[Requirement]:
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    names = [
        *meta["project"]["dependencies"],
        *meta["project"]["optional-dependencies"]["test"],
        *meta["build-system"]["requires"],
    ]
    return [Requirement(r) for r in names]


def _parse_lock(path: Path) -> dict[str, tuple[str, list[str]]]:
    """name -> (the requirement as written, its hashes); options and comments dropped."""
    entries: dict[str, tuple[str, list[str]]] = {}
    # a requirement runs over its backslash-continued lines
    text = re.sub(r"\\\n", " ", path.read_text())
    for line in text.splitlines():
        line = line.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        assert not line.startswith("-"), f"{path.name}: an option line, not a pinned package: {line!r}"
        words = line.split()
        hashes = [w.removeprefix("--hash=") for w in words[1:] if w.startswith("--hash=")]
        assert len(hashes) == len(words) - 1, f"{path.name}: {words[0]}: only --hash options may follow"
        req = Requirement(words[0])
        entries[canonicalize_name(req.name)] = (words[0], hashes)
    return entries


def test_a_lock_exists_for_linux_x86_64_cpython_311():
    assert ROOT / "requirements" / "linux-x86_64-cp311.txt" in LOCKS


@pytest.mark.parametrize("lock", LOCKS, ids=[p.name for p in LOCKS])
def test_every_pin_is_exact_and_hashed(lock):
    entries = _parse_lock(lock)
    assert len(entries) > 20
    for name, (written, hashes) in entries.items():
        spec = list(Requirement(written).specifier)
        assert len(spec) == 1 and spec[0].operator == "==", f"{lock.name}: {written} is not an exact pin"
        assert "*" not in spec[0].version, f"{lock.name}: {written} is not an exact pin"
        assert hashes, f"{lock.name}: {name} has no --hash"
        for h in hashes:
            assert re.fullmatch(r"sha256:[0-9a-f]{64}", h), f"{lock.name}: {name}: {h!r}"


@pytest.mark.parametrize("lock", LOCKS, ids=[p.name for p in LOCKS])
def test_the_lock_covers_pyproject(lock):
    entries = _parse_lock(lock)
    for req in _pyproject_requirements():
        name = canonicalize_name(req.name)
        assert name in entries, (
            f"{lock.name} lacks {req.name} (pyproject.toml); refresh it: bash workflow/scripts/lock.sh"
        )
        version = next(iter(Requirement(entries[name][0]).specifier)).version
        assert req.specifier.contains(version, prereleases=True), (
            f"{lock.name} pins {name}=={version}, outside pyproject.toml's {req}; "
            "refresh it: bash workflow/scripts/lock.sh"
        )


def _platform_key() -> str:
    out = subprocess.run(
        ["bash", "-c", f'source "{BOOTSTRAP}"; neg_platform_key "$1"', "_", sys.executable],
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip()


def _fake_venv(tmp_path: Path) -> tuple[Path, Path]:
    """A venv whose python logs `-m pip ...` calls instead of running pip."""
    venv, log = tmp_path / "venv", tmp_path / "pip.log"
    (venv / "bin").mkdir(parents=True)
    (venv / "pyvenv.cfg").write_text("home = /usr/bin\n")
    python = venv / "bin" / "python"
    python.write_text(
        "#!/usr/bin/env bash\n"
        f'if [ "$1" = -m ] && [ "$2" = pip ]; then echo "${{*:3}}" >>"{log}"; exit 0; fi\n'
        f'exec "{sys.executable}" "$@"\n'
    )
    python.chmod(0o755)
    return venv, log


def _install(root: Path, venv: Path, **env: str) -> subprocess.CompletedProcess:
    script = f'set -euo pipefail; source "{root}/workflow/scripts/bootstrap.sh"; _neg_ensure_installed'
    clean = {k: v for k, v in os.environ.items() if not k.startswith("NEGATIVES_")}
    return subprocess.run(
        ["bash", "-c", script], capture_output=True, text=True, env={**clean, "NEGATIVES_VENV": str(venv), **env}
    )


def test_bootstrap_installs_from_the_lock_with_hashes(tmp_path):
    lock = ROOT / "requirements" / f"{_platform_key()}.txt"
    if not lock.is_file():
        pytest.skip(f"no lock file for this platform ({lock.name})")
    venv, log = _fake_venv(tmp_path)
    out = _install(ROOT, venv)
    assert out.returncode == 0, out.stderr
    calls = log.read_text().splitlines()
    assert calls[1:] == [f"install --require-hashes -r {lock}", f"install --no-deps --no-build-isolation -e {ROOT}"], (
        calls
    )
    stamp = (venv / ".negatives-installed").read_text()
    assert f"lock {lock} sha256 {hashlib.sha256(lock.read_bytes()).hexdigest()}" in stamp
    # installed: a second run installs nothing
    assert _install(ROOT, venv).returncode == 0
    assert log.read_text().splitlines() == calls


def test_a_changed_lock_reinstalls(tmp_path):
    root = tmp_path / "root"
    shutil.copytree(ROOT / "workflow" / "scripts", root / "workflow" / "scripts")
    shutil.copy(ROOT / "pyproject.toml", root)
    lock = root / "requirements" / f"{_platform_key()}.txt"
    lock.parent.mkdir()
    lock.write_text("six==1.16.0 --hash=sha256:" + "0" * 64 + "\n")
    venv, log = _fake_venv(tmp_path)
    assert _install(root, venv).returncode == 0
    lock.write_text("six==1.17.0 --hash=sha256:" + "1" * 64 + "\n")
    assert _install(root, venv).returncode == 0
    assert [c for c in log.read_text().splitlines() if "--require-hashes" in c] == [
        f"install --require-hashes -r {lock}"
    ] * 2


def test_without_a_lock_for_the_platform_it_installs_pyproject_ranges(tmp_path):
    root = tmp_path / "root"
    shutil.copytree(ROOT / "workflow" / "scripts", root / "workflow" / "scripts")
    shutil.copy(ROOT / "pyproject.toml", root)
    venv, log = _fake_venv(tmp_path)
    out = _install(root, venv)
    assert out.returncode == 0, out.stderr
    assert log.read_text().splitlines()[1:] == [f"install -e {root}[test]"]
    assert "no lock file for this platform" in out.stderr
    assert "lock none" in (venv / ".negatives-installed").read_text()


def test_negatives_lock_none_installs_pyproject_ranges(tmp_path):
    venv, log = _fake_venv(tmp_path)
    out = _install(ROOT, venv, NEGATIVES_LOCK="none")
    assert out.returncode == 0, out.stderr
    assert log.read_text().splitlines()[1:] == [f"install -e {ROOT}[test]"]
    assert "NEGATIVES_LOCK=none" in out.stderr
