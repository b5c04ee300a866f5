"""Process memory: keep the peak where the work needs it, and measure it.

glibc serves a large allocation from the heap once an earlier one of that size was freed (its mmap
threshold grows, up to 32 MB), and a heap fragmented by one ONNX Runtime or PyTorch run is never given
back: the diff's resident memory grew by 1.2 GB over its first two windows that way. A fixed
threshold keeps every allocation of 1 MB or more in its own mapping, returned to the system when freed
(measured: resident memory back to 400 MB after each window, the peak that of one run).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import re
import resource
from pathlib import Path

M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 1 << 20


def return_freed_memory() -> bool:
    """Fix glibc's mmap threshold for this process; False where the C library is not glibc."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        return bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))
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
