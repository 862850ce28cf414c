"""Import the package as it was at a git revision, next to the current one,
so that a benchmark can time "before" and "after" side by side in one process.

    before = load_before("81a404e")      # -> module negatives_before (its submodules importable)
    src = extract_src("81a404e")         # -> a folder for PYTHONPATH (its package named negatives)
"""

from __future__ import annotations

import importlib
import io
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def extract_src(rev: str) -> Path:
    """A temporary ``src`` folder whose ``negatives`` package is the one of
    revision ``rev`` (for ``PYTHONPATH``)."""
    tmp = Path(tempfile.mkdtemp(prefix="negatives_before_"))
    # the schema lives in workflow/schemas, linked from the package (where the revision has it)
    paths = ["src/negatives"] + (
        ["workflow/schemas"]
        if subprocess.run(
            ["git", "-C", str(ROOT), "cat-file", "-e", f"{rev}:workflow/schemas"], capture_output=True
        ).returncode
        == 0
        else []
    )
    blob = subprocess.run(["git", "-C", str(ROOT), "archive", rev, *paths], check=True, capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(blob)) as tar:
        tar.extractall(tmp, filter="data")
    return tmp / "src"


def load_before(rev: str, name: str = "negatives_before"):
    src = extract_src(rev)
    (src / "negatives").rename(src / name)
    sys.path.insert(0, str(src))
    return importlib.import_module(name)
