"""Peak RSS and hours of EEG per minute of ``brr-infer`` for synthetic recordings of several lengths.

    python benchmarks/infer_memory.py --hours 1 24 --stride 60 --workdir /tmp/brr-bench

Each length runs in its own fresh process (so peak RSS is that run's alone) on a randomly
initialised checkpoint of ``--config`` through :class:`brr.runtime.worker.RecordingWorker`.
Recordings and the checkpoint are written once into the workdir and reused. The target is peak
RSS for the longest recording within 1.2x of the shortest.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from brr.resources import peak_rss_mb


def prepare(workdir: Path, hours: float, config: str) -> tuple[Path, Path]:
    from brr.data.synthetic import plan_recording, write_recording
    from brr.model import build_detector, save_checkpoint

    checkpoint = workdir / f"ckpt-{config}"
    if not (checkpoint / "config.json").is_file():
        import torch

        torch.manual_seed(0)
        save_checkpoint(build_detector(config).eval(), checkpoint)
    edf = workdir / f"synth_{hours:g}h.edf"
    if not edf.is_file():
        write_recording(plan_recording(seed=0, index=0, duration_s=int(hours * 3600)), edf)
    return checkpoint, edf


def measure(workdir: Path, hours: float, config: str, stride_s: float, batch: int, threads: int | None) -> dict:
    """Run one recording in this process; return its figures (call in a fresh process)."""
    from brr.runtime import InferenceSettings, RecordingJob, RecordingWorker

    checkpoint, edf = prepare(workdir, hours, config)
    settings = InferenceSettings(stride_s=stride_s, batch_size=batch, threads=threads, overwrite=True)
    worker = RecordingWorker(checkpoint, workdir / f"out-{hours:g}h", settings)
    worker.open()
    rss_before_mb = peak_rss_mb()
    started = time.perf_counter()
    entry = worker(RecordingJob(str(edf), edf.stem))
    wall_s = time.perf_counter() - started
    worker.close()
    if entry.status != "ok":
        raise RuntimeError(entry.error)
    return {
        "hours": hours,
        "config": config,
        "stride_s": stride_s,
        "batch": batch,
        "windows": entry.n_windows,
        "events": entry.n_events,
        "wall_s": round(wall_s, 1),
        "eeg_hours_per_minute": round(hours / (wall_s / 60.0), 3),
        "peak_rss_after_engine_load_mb": round(rss_before_mb, 1),
        "peak_rss_mb": round(peak_rss_mb(), 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hours", type=float, nargs="+", default=[1.0, 24.0])
    parser.add_argument("--config", default="v3-small")
    parser.add_argument("--stride", type=float, default=60.0)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--workdir", default="/tmp/brr-bench")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    if args.child:
        print(json.dumps(measure(workdir, args.hours[0], args.config, args.stride, args.batch, args.threads)))
        return 0
    for hours in args.hours:  # synthesis outside the measured processes
        prepare(workdir, hours, args.config)
    rows = []
    for hours in args.hours:
        command = [sys.executable, __file__, "--child", "--hours", str(hours), "--config", args.config,
                   "--stride", str(args.stride), "--batch", str(args.batch), "--workdir", str(workdir)]
        if args.threads is not None:
            command += ["--threads", str(args.threads)]
        result = subprocess.run(command, check=True, capture_output=True, text=True)
        # Runners may log to stdout too; the figures are the one JSON line.
        rows.append(json.loads(next(line for line in result.stdout.splitlines() if line.startswith('{"'))))
        print(json.dumps(rows[-1]), flush=True)
    ratio = rows[-1]["peak_rss_mb"] / rows[0]["peak_rss_mb"]
    print(json.dumps({"peak_rss_ratio_longest_vs_shortest": round(ratio, 3), "target": 1.2,
                      "within_target": ratio <= 1.2}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
