"""What the machine can do: CPU model and flags, and measured GEMM peaks (the roofline's ceiling)."""

from __future__ import annotations

import platform
import time
from pathlib import Path

import torch

RELEVANT_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8")


def cpu_info() -> dict:
    model, flags = platform.processor(), set()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    return {
        "cpu_model": model, "cpu_flags": [f for f in RELEVANT_FLAGS if f in flags],
        "threads": torch.get_num_threads(), "torch": torch.__version__,
    }


def gemm_peak_gflops(dtype: torch.dtype, size: int = 2048, repeats: int = 5) -> float:
    """Best-of-N GFLOP/s of one large square matmul: the practical compute ceiling for that dtype."""
    a = torch.randn(size, size).to(dtype)
    b = torch.randn(size, size).to(dtype)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9


def machine_peaks() -> dict:
    info = cpu_info()
    peaks = {"fp32_gemm_gflops": gemm_peak_gflops(torch.float32)}
    if "avx512_bf16" in info["cpu_flags"] or "amx_bf16" in info["cpu_flags"]:
        peaks["bf16_gemm_gflops"] = gemm_peak_gflops(torch.bfloat16)
    return {**info, **peaks}
