"""Training throughput of ``brr-train`` as users run it: fp32 and bf16 autocast in one process, and fp32 in
1 process against 2 (torchrun, gloo), with the peak RSS of each run, and the store's loader beside them.

    python benchmarks/train_throughput.py [--model v3-small] [--crop-s 15] [--batch-size 4] [--steps 12]

A synthetic corpus (``--recordings`` x ``--minutes``, seed 3) is prepared once into a window store; each
configuration then runs ``brr-train`` from the same seed for one epoch of ``--steps`` steps under
``/usr/bin/time`` (%M: the peak RSS of the largest process of the tree), and the windows per second of its
training steps (forward, backward, update; not reading or validating) come from its
``train_result.json``. The loader's windows per second read the same store through ``epoch_loader`` in
this process (0 workers: what one training process adds). One process uses every core (``--threads``
0); two processes one core each. Figures go to ``benchmarks/results/<UTC>-train-throughput.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from report_files import utc_stamp, write_report  # noqa: E402

RUNS = (("fp32", 1), ("bf16", 1), ("fp32", 2))


def timed(command: list[str], env: dict) -> tuple[float, float]:
    """(wall seconds, peak RSS MB of the largest process) of ``command``, which must succeed."""
    started = time.perf_counter()
    done = subprocess.run(["/usr/bin/time", "-f", "%M", *command], capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - started
    if done.returncode:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stdout}\n{done.stderr}")
    peak_kb = int(re.findall(r"^(\d+)$", done.stderr, re.M)[-1])
    return seconds, peak_kb / 1024


def loader_windows_per_s(store: Path, window_s: float, batch_size: int, batches: int) -> float:
    from brr.train.dataset import TrainingWindows, epoch_loader
    from brr.train.store import open_store

    windows = TrainingWindows(open_store(store).recordings, window_s, window_s)
    drawn = windows.draw_epoch(batches * batch_size, 0.5, seed=0, epoch=0)
    started = time.perf_counter()
    for _ in epoch_loader(windows, drawn, batch_size, workers=0):
        pass
    return len(drawn) / (time.perf_counter() - started)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="v3-small")
    parser.add_argument("--crop-s", type=float, default=15.0)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--recordings", type=int, default=4)
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/brr-train-throughput"))
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args(argv)
    from machine import cpu_info

    from brr.data.synthetic import write_corpus
    from brr.train.store import prepare_store

    work = args.workdir
    corpus, store = work / "corpus", work / "store"
    if not corpus.is_dir():
        write_corpus(corpus, recordings=args.recordings, minutes=args.minutes, seed=3)
    prepare_store(corpus, store, 60.0, workers=2, progress=False)
    config = work / "train.yaml"
    config.write_text(yaml.safe_dump({
        "data": str(store), "model": args.model, "crop_s": args.crop_s, "stride_s": args.crop_s,
        "batch_size": args.batch_size, "steps_per_epoch": args.steps, "epochs": 1, "warmup_steps": 0,
        "val_stride_s": 60.0, "val_fraction": 0.25, "loader_workers": 0, "progress": False}))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    report = {"machine": cpu_info(), "model": args.model, "crop_s": args.crop_s, "batch_size": args.batch_size,
              "steps": args.steps, "runs": []}
    for precision, processes in RUNS:
        out = work / f"run-{precision}-{processes}"
        train = ["-m", "brr.cli.train", "--config", str(config), "-o", str(out), "-q", "--precision", precision,
                 "--threads", "1" if processes > 1 else "0"]
        command = ([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}",
                    *train] if processes > 1 else [sys.executable, *train])
        run_env = env if processes > 1 else {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
        subprocess.run(["rm", "-rf", str(out)], check=True)
        wall, peak = timed(command, run_env)
        result = json.loads((out / "train_result.json").read_text())
        row = {"precision": precision, "processes": processes, "windows_per_s": result["windows_per_s"],
               "step_seconds": result["step_seconds"], "wall_s": wall, "peak_rss_mb": peak,
               "skipped_steps": result["skipped_steps"], "first_loss": result["losses"][0]}
        report["runs"].append(row)
        print(row)
    loader = loader_windows_per_s(store, args.crop_s, args.batch_size, 64)
    report["loader_windows_per_s"] = loader
    fastest = max(r["windows_per_s"] for r in report["runs"])
    report["loader_over_fastest_step"] = loader / fastest
    base = report["runs"][0]["windows_per_s"]
    lines = [f"CPU: {report['machine']['cpu_model']}, {report['machine']['threads']} threads; {args.model}, "
             f"{args.batch_size} x {args.crop_s:g} s crops, {args.steps} steps (brr-train, one epoch)", "",
             "| precision | processes | training windows/s | vs fp32 x1 | wall s (whole run) | peak RSS MB |",
             "|---|---|---|---|---|---|"]
    for r in report["runs"]:
        lines.append(f"| {r['precision']} | {r['processes']} | {r['windows_per_s']:.2f} | "
                     f"{r['windows_per_s'] / base:.2f}x | {r['wall_s']:.0f} | {r['peak_rss_mb']:.0f} |")
    lines += ["", f"Loader (store, 0 workers, {args.crop_s:g} s windows): {loader:.0f} windows/s, "
                  f"{report['loader_over_fastest_step']:.0f}x the fastest training step's rate."]
    write_report(args.out, f"{utc_stamp()}-train-throughput", report, "\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
