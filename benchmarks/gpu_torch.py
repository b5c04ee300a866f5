"""PyTorch eager on a CUDA GPU: windows/s of the detector in fp32 and bf16 autocast, per stage share.

    python benchmarks/gpu_torch.py [--configs v3-small,v3] [--batches 1,4,16]
Prints a table and writes benchmarks/results/gpu-<stamp>.json.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from report_files import utc_stamp, write_report

from brr.model import build_detector


def timed(fn, repeats: int) -> list[float]:
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--configs", default="v3-small,v3")
    parser.add_argument("--batches", default="1,4,16")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("no CUDA GPU: nothing to measure", file=sys.stderr)
        return 2
    rows = []
    for config in args.configs.split(","):
        torch.manual_seed(0)
        model = build_detector(config).cuda().eval()
        for batch in map(int, args.batches.split(",")):
            x = torch.randn(batch, 19, model.config.window_samples, device="cuda")
            with torch.inference_mode():
                reference = model(x)
                for precision in ("fp32", "bf16"):
                    def forward():
                        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=precision == "bf16"):
                            return model(x)
                    times = timed(forward, args.repeats)
                    median = sorted(times)[len(times) // 2]
                    error = (forward().float() - reference).abs().max().item()
                    rows.append({"config": config, "precision": precision, "batch": batch,
                                 "windows_per_s": batch / median, "eeg_hours_per_min": batch / median,
                                 "max_logit_error_vs_fp32": error, "spread_s": [min(times), max(times)],
                                 "peak_gpu_mb": torch.cuda.max_memory_allocated() / 2**20,
                                 "device": torch.cuda.get_device_name()})
                    print(f"{config:9s} {precision} b={batch:<3d} {batch / median:8.2f} windows/s "
                          f"max logit err {error:.2e}  peak {rows[-1]['peak_gpu_mb']:.0f} MB")
    write_report(args.out, f"gpu-{utc_stamp()}", rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
