"""Process-wide settings of a job's process (called by ``python -m negatives``).

:func:`keep_freed_memory`: glibc's ``malloc`` serves large blocks (above a
threshold that adapts up to 32 MB) with fresh ``mmap`` pages and returns
freed memory at the top of the heap to the system.  A training step
allocates and frees the same activation and gradient tensors (up to 13 MB
each at the default scale) every step, so every step touched fresh pages:
about 6,800 page faults and their zeroing per step at the default scale.
Fixing the mmap threshold at its maximum and never trimming the heap lets
each step reuse the memory the previous one freed.  The process keeps its
peak memory (which it reaches again every step anyway).  A no-op where the C
library is not glibc; the environment variables ``MALLOC_MMAP_THRESHOLD_`` /
``MALLOC_TRIM_THRESHOLD_``, when set, win.

:func:`check_fits`: a size the settings imply (the images of a prepared
dataset, a network and its queue, the pairs of an analysis) is compared
with the memory there is before anything that size is allocated: past it,
Linux either refuses the allocation deep inside torch or lets the process
grow until the kernel kills it.  :class:`TooLarge` names the key and the size.
"""

from __future__ import annotations

import ctypes
import os

__all__ = [
    "keep_freed_memory",
    "TooLarge",
    "available_bytes",
    "check_fits",
    "size_text",
    "pretrain_bytes",
    "check_pretrain",
]

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters
_MMAP_MAX_THRESHOLD = 32 * 1024 * 1024  # glibc's upper limit on 64-bit
_NEVER_TRIM = 2**31 - 1  # mallopt takes an int


def keep_freed_memory() -> bool:
    """Make glibc malloc reuse freed large blocks instead of returning them
    to the system (see the module docstring).  Returns True when applied."""
    if os.environ.get("MALLOC_MMAP_THRESHOLD_") or os.environ.get("MALLOC_TRIM_THRESHOLD_"):
        return False
    try:
        libc = ctypes.CDLL(None)  # the process's own symbols: its C library among them
        mallopt = libc.mallopt
        _ = libc.gnu_get_libc_version  # glibc only: musl has no such symbol
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_MAX_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, _NEVER_TRIM))


class TooLarge(ValueError):
    """What the settings imply does not fit in the memory there is."""


def size_text(n: float) -> str:
    """``3.5 GiB``: a byte count for a message."""
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024 or unit == "PiB":
            return f"{n:.0f} bytes" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError  # pragma: no cover


def _read_int(path: str) -> int | None:
    try:
        with open(path) as f:
            text = f.read().strip()
        return None if text == "max" else int(text)
    except (OSError, ValueError):
        return None


def available_bytes() -> int | None:
    """What this process may still allocate: the machine's available memory
    (``MemAvailable``), or less where the process's cgroup limits it (SLURM
    and containers do so); ``None`` where neither is known."""
    found = []
    try:
        with open("/proc/meminfo") as f:
            found += [int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:")]
    except (OSError, ValueError, IndexError):
        pass
    v1 = "/sys/fs/cgroup/memory/memory."
    for limit, usage in (
        ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),  # cgroup v2
        (v1 + "limit_in_bytes", v1 + "usage_in_bytes"),
    ):
        cap, used = _read_int(limit), _read_int(usage)
        if cap is not None and cap < 2**60 and used is not None:  # v1 writes "no limit" as a huge number
            found.append(max(0, cap - used))
    return min(found) if found else None


def check_fits(need: int, what: str, fix: str, available: int | None = None, where: str = "") -> None:
    """Raise :class:`TooLarge` when ``need`` bytes exceed ``available`` (by
    default :func:`available_bytes`; nothing is checked where it is unknown).
    ``what`` names the keys and values that imply the size, ``fix`` says what to change."""
    have = available_bytes() if available is None else available
    if have is not None and need > have:
        raise TooLarge(
            f"{what} need about {size_text(need)} of memory, but {size_text(have)} is available{where}; {fix}"
        )


def pretrain_bytes(method: str, settings, shape, processes: int = 1) -> dict[str, tuple[int, str, str]]:
    """What ``processes`` processes of a run of ``settings`` (a
    ``PretrainSettings``) sharing one memory hold at least, on images of
    ``shape`` ``(C, H, W)``, per part: ``{part: (bytes, what, fix)}``.  The
    network is built on the meta device: its parameters are counted, not
    allocated."""
    import torch

    from ..models import build_encoder

    c, h, w = shape
    s = settings
    with torch.device("meta"):
        encoder = build_encoder(
            s.backbone,
            c,
            dim=s.dim,
            hidden_dim=s.hidden_dim,
            num_splits=s.bn_splits,
            width=s.width,
            small_stem=s.small_stem,
        )
    params = sum(t.numel() for t in encoder.parameters())
    copies = 4 if method == "moco" else 3  # weights, gradients, SGD momentum (and MoCo's key encoder)
    stem = 1 if s.small_stem else 4  # the first layer's output: at full resolution, or a quarter of it
    return {
        "network": (
            params * 4 * copies * processes,
            f"pretrain.width {s.width}, pretrain.dim {s.dim}, pretrain.hidden_dim {s.hidden_dim} "
            f"(backbone {s.backbone}: {params:,} parameters, with their gradients and optimizer state)",
            "lower pretrain.width, pretrain.dim or pretrain.hidden_dim",
        ),
        # queue_extra left out: only a replace-mode policy adds it
        "queue": (
            s.queue_size * s.dim * 4 * processes if method == "moco" else 0,
            f"pretrain.queue_size {s.queue_size} x pretrain.dim {s.dim} (MoCo's queue)",
            "lower pretrain.queue_size or pretrain.dim",
        ),
        "batch": (
            s.batch_size * processes // s.processes * 2 * (c * h * w + s.width * h * w // stem) * 4,
            f"pretrain.batch_size {s.batch_size} x 2 views of {c}x{h}x{w} images (and the first layer's "
            f"{s.width} channels)",
            "lower pretrain.batch_size (or the image size)",
        ),
    }


def check_pretrain(method: str, settings, shape) -> None:
    """Refuse a run whose network, queue and batch (:func:`pretrain_bytes`)
    cannot fit: in the GPU's memory when it trains on one, else in the
    machine's.  Names the largest part's keys."""
    import torch

    from .gpus import resolve_device

    device = resolve_device(settings.device, "pretrain.device")
    available, where, sharing = None, "", settings.processes  # the machine's processes share its memory
    if device.type == "cuda":  # each process has a GPU of its own
        available, where, sharing = torch.cuda.get_device_properties(device.index or 0).total_memory, " on one GPU", 1
    parts = pretrain_bytes(method, settings, shape, sharing)
    _, what, fix = max(parts.values())
    check_fits(sum(b for b, _, _ in parts.values()), what, fix, available, where)
