"""The house style, as pyproject.toml configures ruff: the code is laid out by
`ruff format` and passes `ruff check` (both run here, so CI holds them)."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _ruff(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ruff", *args], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_the_code_is_formatted_by_ruff():
    proc = _ruff("format", "--check", "--diff", ".")
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]


def test_ruff_check_passes():
    proc = _ruff("check", "--output-format", "concise", ".")
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]


def test_the_style_checks_can_fail(tmp_path):
    (tmp_path / "pyproject.toml").write_text((ROOT / "pyproject.toml").read_text())
    (tmp_path / "bad.py").write_text("import os\nx  =  1\n")
    run = lambda *a: subprocess.run([sys.executable, "-m", "ruff", *a], cwd=tmp_path, capture_output=True)  # noqa: E731
    assert run("format", "--check", ".").returncode == 1
    assert run("check", ".").returncode == 1  # an unused import
