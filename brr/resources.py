"""Process memory: keep the peak where the work needs it, and measure it.

glibc serves a large allocation from the heap once an earlier one of that size was freed (its mmap
threshold grows, up to 32 MB), and a heap fragmented by one ONNX Runtime or PyTorch run is never given
back: the diff's resident memory grew by 1.2 GB over its first two windows that way. A fixed threshold
of 1 MB (``LEAN_MMAP_THRESHOLD``) keeps every allocation of 1 MB or more in its own mapping, returned to
the system when freed (measured: resident memory back to 400 MB after each window, the peak that of one
run). That costs a fresh, page-faulting mapping for every such tensor, which PyTorch eager pays on every
op: brr-infer's per-window stages of v3 took 1.7-2.0 s a window instead of 0.65-0.95 s, a v3-small
training step 16.3-17.3 s instead of 13.8-15.8 s. The tools whose hot loop is PyTorch (inference, training) leave glibc's dynamic
threshold as it is (``fix_mmap_threshold(None)``). A fixed large one is no substitute: fixing it also fixes
the trim threshold at 128 kB, so the heap is given back and faulted in again at every window (brr-infer
per-window on v3: 166 s for 10 minutes of EEG at 1 MB, 107 s at 32 MB fixed, 85 s with glibc's own).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import re
import resource
from pathlib import Path

M_MMAP_THRESHOLD = -3
LEAN_MMAP_THRESHOLD = 1 << 20


def fix_mmap_threshold(threshold_bytes: int | None) -> bool:
    """Fix glibc's mmap threshold for this process (None: leave glibc's dynamic one); False where nothing was
    fixed or the C library is not glibc."""
    if threshold_bytes is None:
        return False
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        return bool(libc.mallopt(M_MMAP_THRESHOLD, threshold_bytes))
    except (OSError, AttributeError, TypeError):
        return False


def peak_rss_mb() -> float:
    """This process's peak resident memory so far, in MB.

    The kernel's high-water mark of this address space (VmHWM), which starts afresh at exec: getrusage's
    ru_maxrss survives exec, so a process spawned by a 3 GB parent would report the parent's 3 GB.
    """
    try:
        status = Path("/proc/self/status").read_text(encoding="utf-8", errors="replace")
    except OSError:  # no /proc: not Linux
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return int(re.search(r"^VmHWM:\s+(\d+) kB", status, re.MULTILINE)[1]) / 1024
