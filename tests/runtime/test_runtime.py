"""negatives.runtime: the malloc setting of a job's process."""

import subprocess
import sys

import pytest

from negatives.runtime.memory import keep_freed_memory

glibc = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")


@glibc
def test_freed_blocks_are_reused_instead_of_faulted_in_again():
    """Three 13 MB temporaries made and freed step after step: with the
    setting, the steps after the first ones touch no fresh page (glibc's
    default faults in thousands of pages per round)."""
    code = """
import resource, sys, torch
from negatives.runtime.memory import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory()
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
x = torch.randn(256, 16, 28, 28)          # 13 MB, as the first layer's activations
def steps(n):
    for _ in range(n):
        y = x * 2; z = y + 1; w = torch.relu(z); del y, z, w
steps(20)
before = faults()
steps(40)
print(faults() - before)
"""
    counts = {}
    for mode in ("plain", "keep"):
        out = subprocess.run([sys.executable, "-c", code, mode], capture_output=True, text=True, check=True)
        counts[mode] = int(out.stdout.strip())
    one = 256 * 16 * 28 * 28 * 4 // 4096  # the pages of one temporary: 3136
    # glibc's default faults in several temporaries' worth per 40 steps (how
    # many depends on the machine); with the setting none, or now and then one
    # temporary's worth (the heap's top moved)
    assert counts["keep"] <= one < counts["plain"], counts


def test_environment_settings_win(monkeypatch):
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "131072")
    assert keep_freed_memory() is False
