"""Import the package as it was at a git revision, next to the current one,
so that a benchmark can time "before" and "after" side by side in one process.

    before = load_before("81a404e")      # -> module negatives_before (its submodules importable)
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


def load_before(rev: str, name: str = "negatives_before"):
    tmp = Path(tempfile.mkdtemp(prefix="negatives_before_"))
    blob = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "src/negatives"], check=True,
                          capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(blob)) as tar:
        tar.extractall(tmp, filter="data")
    (tmp / "src" / "negatives").rename(tmp / name)
    sys.path.insert(0, str(tmp))
    return importlib.import_module(name)
