"""What the machine can do: CPU model and flags, and measured GEMM peaks (the roofline's ceiling)."""

from __future__ import annotations

import time

import torch

from brr.machine import cpu_model_and_flags, has_bf16


def cpu_info() -> dict:
    model, flags = cpu_model_and_flags()
    return {"cpu_model": model, "cpu_flags": flags, "threads": torch.get_num_threads(), "torch": torch.__version__}


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
    if has_bf16():
        peaks["bf16_gemm_gflops"] = gemm_peak_gflops(torch.bfloat16)
    return {**info, **peaks}
