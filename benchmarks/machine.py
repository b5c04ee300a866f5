"""What the machine can do: CPU model and flags, measured GEMM peaks, SiLU rate and memory bandwidth (the
roofline's ceilings).

A peak is the best of the kernels the engines use: PyTorch's matmul (MKL or oneDNN, whichever it
dispatches to), OpenVINO's MatMul and its convolution (oneDNN). They differ by CPU: on an AMD EPYC with
AVX-512, a ceiling from PyTorch's fp32 matmul alone (174 GFLOP/s) put an fp32 OpenVINO engine at 124 % of
its "roofline", and OpenVINO's convolution reaches 406 GFLOP/s where its MatMul reaches 316. The int8 peak is
OpenVINO's int8 convolution (VNNI or AMX), the kernel the int8 engines' TCN runs; a CPU on which OpenVINO
compiles it in another precision has no int8 peak.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import torch

from brr.machine import cpu_model_and_flags, has_bf16


def cpu_info() -> dict:
    model, flags = cpu_model_and_flags()
    return {"cpu_model": model, "cpu_flags": flags, "threads": torch.get_num_threads(), "torch": torch.__version__}


def best_seconds(call: Callable[[], object], repeats: int) -> float:
    """Best-of-N seconds of ``call`` after one warm-up call: on a shared machine a neighbour only slows a run."""
    call()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        best = min(best, time.perf_counter() - start)
    return best


def gemm_peak_gflops(dtype: torch.dtype, size: int = 2048, repeats: int = 10) -> float:
    """GFLOP/s of one large square matmul: the practical compute ceiling for that dtype."""
    a = torch.randn(size, size).to(dtype)
    b = torch.randn(size, size).to(dtype)
    return 2 * size**3 / best_seconds(lambda: torch.mm(a, b), repeats) / 1e9


def _openvino_compiled(output, source, inference_precision: str):
    import openvino as ov

    from brr.backends.openvino.loader import compile_model

    return compile_model(ov.Core(), ov.Model([output], [source]), "CPU",
                         {"INFERENCE_PRECISION_HINT": inference_precision})


def _openvino_seconds(compiled, source, repeats: int) -> float:
    """Best seconds of the compiled one-input OpenVINO model on random data."""
    import numpy as np

    request = compiled.create_infer_request()
    data = np.random.default_rng(1).standard_normal(list(source.get_output_shape(0))).astype(np.float32)
    return best_seconds(lambda: request.infer([data]), repeats)


def openvino_gemm_peak_gflops(inference_precision: str, size: int = 2048, repeats: int = 10) -> float:
    """GFLOP/s of one square MatMul compiled by OpenVINO at ``inference_precision`` ('f32', 'bf16')."""
    import numpy as np
    import openvino as ov
    import openvino.opset13 as ops

    a = ops.parameter([size, size], ov.Type.f32)
    b = ops.constant(np.random.default_rng(0).standard_normal((size, size)).astype(np.float32))
    compiled = _openvino_compiled(ops.matmul(a, b, False, False), a, inference_precision)
    return 2 * size**3 / _openvino_seconds(compiled, a, repeats) / 1e9


def openvino_conv_peak_gflops(inference_precision: str, channels: int = 512, taps: int = 7, length: int = 15360,
                              repeats: int = 10) -> float:
    """GFLOP/s of one causal Conv1d of the TCN's widest shape compiled by OpenVINO: its convolution kernel
    outruns its MatMul on some CPUs (an AMD EPYC: 355 against 307 GFLOP/s fp32), and a ceiling below what the
    model's own layers reach is no ceiling."""
    import numpy as np
    import openvino as ov
    import openvino.opset13 as ops

    x = ops.parameter([1, channels, length], ov.Type.f32)
    weight = ops.constant(np.random.default_rng(0).standard_normal((channels, channels, taps)).astype(np.float32))
    compiled = _openvino_compiled(ops.convolution(x, weight, [1], [taps - 1], [0], [1]), x, inference_precision)
    return 2 * channels * channels * taps * length / _openvino_seconds(compiled, x, repeats) / 1e9


def openvino_int8_conv_peak_gops(channels: int = 512, taps: int = 7, length: int = 15360, repeats: int = 10
                                 ) -> float | None:
    """GOP/s of the TCN's widest Conv1d with int8 activations and weights, as NNCF's FakeQuantize marks it and
    OpenVINO's low-precision pass lowers it; None where the convolution does not run in int8 on this CPU."""
    import numpy as np
    import openvino as ov
    import openvino.opset13 as ops

    def fake_quantize(node, low: float, high: float, levels: int):
        bounds = [ops.constant(np.float32(v)) for v in (low, high, low, high)]
        return ops.fake_quantize(node, *bounds, levels)

    x = ops.parameter([1, channels, length], ov.Type.f32)
    weight = ops.constant(np.random.default_rng(0).uniform(-1, 1, (channels, channels, taps)).astype(np.float32))
    conv = ops.convolution(fake_quantize(x, -4.0, 4.0, 256), fake_quantize(weight, -1.0, 1.0, 255),
                           [1], [taps - 1], [0], [1])
    compiled = _openvino_compiled(conv, x, "f32")
    precisions = {op.get_rt_info()["runtimePrecision"].astype(str).lower()
                  for op in compiled.get_runtime_model().get_ops()
                  if op.get_rt_info()["layerType"].astype(str) == "Convolution"}
    if not precisions or not precisions <= {"i8", "u8"}:
        return None
    return 2 * channels * channels * taps * length / _openvino_seconds(compiled, x, repeats) / 1e9


def silu_peak_gvalues(values: int = 2**21, repeats: int = 50) -> dict[str, float]:
    """G values/s of SiLU on every thread, by library: PyTorch's and the scan kernels' own (which the fused
    convolution and gated norm apply), over 8 MB that stay in cache and amortise the native call's thread start.
    The ceiling of a stage's transcendentals, which occupy the same vector units as its multiply-adds."""
    from brr.ops.selective_scan import native

    x = torch.randn(values)
    rates = {"torch": values / best_seconds(lambda: torch.nn.functional.silu(x), repeats) / 1e9}
    if native.available():
        kernels, source, out = native.require(), x.numpy(), np.empty(values, np.float32)
        rates["brr-scan"] = values / best_seconds(lambda: kernels.silu(source, out, torch.get_num_threads()),
                                                  repeats) / 1e9
    return rates


def memory_bandwidth_gbs(megabytes: int = 512, repeats: int = 10) -> float:
    """GB/s of one large copy on every thread (bytes read + bytes written): the roofline's memory ceiling,
    against which a stage's bytes moved give its time limit."""
    source = torch.ones(megabytes * 2**20 // 4)
    target = torch.empty_like(source)
    return 2 * source.numel() * 4 / best_seconds(lambda: target.copy_(source), repeats) / 1e9


def machine_peaks() -> dict:
    """CPU description and, per precision, the best GEMM GFLOP/s over the libraries (each one's figure too; int8's
    in GOP/s)."""
    info = cpu_info()
    measured = {"fp32": {"torch": gemm_peak_gflops(torch.float32), "openvino": openvino_gemm_peak_gflops("f32"),
                         "openvino-conv": openvino_conv_peak_gflops("f32")}}
    if has_bf16():
        measured["bf16"] = {"torch": gemm_peak_gflops(torch.bfloat16), "openvino": openvino_gemm_peak_gflops("bf16"),
                            "openvino-conv": openvino_conv_peak_gflops("bf16")}
    int8 = openvino_int8_conv_peak_gops()
    if int8 is not None:
        measured["int8"] = {"openvino-conv": int8}
    peaks = {f"{precision}_gemm_gflops": max(by_library.values()) for precision, by_library in measured.items()}
    silu = silu_peak_gvalues()
    return {**info, **peaks, "gemm_gflops_by_library": measured, "silu_gvalues": max(silu.values()),
            "silu_gvalues_by_library": silu, "memory_gbs": memory_bandwidth_gbs()}
