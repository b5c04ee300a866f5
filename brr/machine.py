"""This machine as engine speed depends on it: CPU model, the vector and matrix extensions, threads.

A CPU's model name alone does not tell apart machines whose engines differ several-fold (two machines
here both say "AMD EPYC", one with AVX-512 and bf16, one with AVX2 only), so serving times recorded in
an export folder are compared only between engines timed on the same ``describe()``.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

# The extensions that change which kernels the engines run (and so their speed), in /proc/cpuinfo's names.
SPEED_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8")
BF16_FLAGS = ("avx512_bf16", "amx_bf16")
CPUINFO = Path("/proc/cpuinfo")


def cpu_threads() -> int:
    """The CPUs this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def cpu_model_and_flags(cpuinfo: Path = CPUINFO) -> tuple[str, list[str]]:
    """The CPU's model name and which of ``SPEED_FLAGS`` it has (none known off Linux)."""
    model, flags = "", set()
    for line in cpuinfo.read_text().splitlines() if cpuinfo.exists() else []:
        key, _, value = line.partition(":")
        if key.strip() == "model name" and not model:
            model = value.strip()
        elif key.strip() == "flags" and not flags:
            flags = set(value.split())
    return model or platform.processor() or platform.machine(), [f for f in SPEED_FLAGS if f in flags]


def has_bf16() -> bool:
    """Whether the CPU computes in bf16 natively (AVX-512 bf16 or AMX), where bf16 engines pay."""
    return any(f in BF16_FLAGS for f in cpu_model_and_flags()[1])


def describe(cpuinfo: Path = CPUINFO) -> str:
    """One line that is equal for two processes only where engine speeds compare: model, flags, threads."""
    model, flags = cpu_model_and_flags(cpuinfo)
    return f"{model} ({', '.join(flags) or 'no vector extensions known'}), {cpu_threads()} threads"
