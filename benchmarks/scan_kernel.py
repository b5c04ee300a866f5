"""Selective-scan kernel benchmark: the op ``brr::selective_scan`` at the shapes of a model's node and edge
Mamba blocks (one 60 s window per sequence batch), forward and forward + backward, against this machine's
measured fp32 GEMM peak.

    python benchmarks/scan_kernel.py [--config v3] [--batch 1] [--repeats 15]

The recurrence costs about 5 x heads x headdim x d_state flops per token forward (decay and input terms
of the state update, its read-out) and about 3x that forward + backward; the fraction of the GEMM peak
says how far the kernel is from the machine, not from a GEMM (the scan is a chain in time, not a GEMM).
Writes benchmarks/results/<stamp>-scan.json and .md and prints the table.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import torch  # noqa: E402
from machine import machine_peaks  # noqa: E402
from report_files import utc_stamp, write_report  # noqa: E402

from brr.model import build_detector  # noqa: E402
from brr.model.mamba2 import Mamba2  # noqa: E402
from brr.ops.selective_scan import native, selective_scan  # noqa: E402

FLOPS_PER_STATE_ELEMENT = {"forward": 5, "forward+backward": 15}


def scan_shapes(config: str, batch: int) -> dict[str, tuple[int, int, int, int, int]]:
    """(sequences, length, heads, headdim, d_state) of each Mamba stream's scan for ``batch`` windows."""
    model = build_detector(config).eval()
    shapes: dict[str, tuple[int, int, int, int, int]] = {}
    hooks = []

    def record(stream: str, module: Mamba2, u: torch.Tensor) -> None:
        shapes.setdefault(stream, (u.shape[0], u.shape[1], module.nheads, module.headdim, module.d_state))

    for name, module in model.named_modules():
        if isinstance(module, Mamba2):
            stream = name.split(".")[0]
            hooks.append(module.register_forward_hook(lambda m, args, out, stream=stream: record(stream, m, args[0])))
    with torch.inference_mode():
        model(torch.zeros(batch, model.config.n_channels, model.config.window_samples))
    for hook in hooks:
        hook.remove()
    return shapes


def time_scan(shape: tuple[int, int, int, int, int], backward: bool, repeats: int) -> float:
    """Median seconds of one call (after a warm-up) on random inputs of ``shape``."""
    b, length, h, p, n = shape
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(b, length, h, p, generator=generator, requires_grad=backward)
    dt = torch.randn(b, length, h, generator=generator, requires_grad=backward)
    B = torch.randn(b, length, 1, n, generator=generator, requires_grad=backward)
    C = torch.randn(b, length, 1, n, generator=generator, requires_grad=backward)
    A, D, dt_bias = -torch.rand(h, generator=generator) - 0.5, torch.ones(h), torch.zeros(h)

    def call() -> None:
        if backward:
            selective_scan(x, dt, A, B, C, D, dt_bias, True, 64).sum().backward()
        else:
            with torch.inference_mode():
                selective_scan(x, dt, A, B, C, D, dt_bias, True, 64)

    call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def run(config: str, batch: int, repeats: int) -> dict:
    machine = machine_peaks()
    peak = machine["fp32_gemm_gflops"]
    rows = []
    for stream, shape in scan_shapes(config, batch).items():
        b, length, h, p, n = shape
        for mode, per_element in FLOPS_PER_STATE_ELEMENT.items():
            seconds = time_scan(shape, mode != "forward", repeats)
            gflops = per_element * b * length * h * p * n / seconds / 1e9
            rows.append({"stream": stream, "shape": {"sequences": b, "length": length, "heads": h, "headdim": p,
                                                     "d_state": n},
                         "mode": mode, "ms": seconds * 1e3, "gflops": gflops, "of_fp32_peak": gflops / peak})
    kernel = "native" if native.enabled() else "reference"
    return {"machine": machine, "config": config, "batch": batch, "kernel": kernel, "results": rows}


def markdown(report: dict) -> str:
    machine = report["machine"]
    title = (f"Selective scan, `{report['config']}` at batch {report['batch']} ({report['kernel']} kernel); "
             f"{machine['cpu_model']} ({', '.join(machine['cpu_flags'])}), {machine['threads']} threads, "
             f"fp32 GEMM peak {machine['fp32_gemm_gflops']:.0f} GFLOP/s")
    lines = [title, "",
             "| stream | (b, l, h, p, n) | mode | ms | GFLOP/s | of fp32 peak |", "|---|---|---|---|---|---|"]
    for r in report["results"]:
        s = r["shape"]
        dims = f"({s['sequences']}, {s['length']}, {s['heads']}, {s['headdim']}, {s['d_state']})"
        lines.append(f"| {r['stream']} | {dims} | {r['mode']} | {r['ms']:.2f} | {r['gflops']:.1f} | "
                     f"{r['of_fp32_peak']:.0%} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="v3")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args(argv)
    report = run(args.config, args.batch, args.repeats)
    write_report(args.out, f"{utc_stamp()}-scan", report, markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
