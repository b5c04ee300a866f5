"""The prepared window store against corpus size: prepare time per hour of EEG, and the training loader's
peak memory and speed.

    python benchmarks/store.py --hours 2 50 --workdir /tmp/brr-store-bench

Each corpus is made of one-hour synthetic recordings (``brr.data.synthetic``, seed 11; recording ``i``
is the same in every corpus, so the small corpus is the first recordings of the large one). Each is
prepared from scratch by ``brr-prepare`` in its own process, then prepared again (every shard reused:
the cost of resuming is hashing the EDFs), each under ``/usr/bin/time`` for the wall time and the peak
RSS of the largest process of the tree (%M).

Then a fresh process per corpus, loader setting and window length reads ``--windows`` windows drawn at
random over all of the corpus's recordings through the training loader (``epoch_loader``, batches of
``--batch-size``, 0 or 2 worker processes), at v3-small's training windows: its 60 s model window and the
shipped recipe's 15 s crops. Its peak RSS (again %M, workers included) is what must not grow with the
corpus: windows are read with positioned reads, and a memory-mapped store would add every page an epoch
touches. The store's pages are in the page cache (just written), so the speed is the loader's, not the
disk's. Figures go to ``benchmarks/results/<UTC>-store.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from report_files import utc_stamp, write_report

RESULTS = Path(__file__).parent / "results"
SEED = 11
RECORDING_MINUTES = 60
WINDOWS_S = (60.0, 15.0)  # v3-small's model window; the shipped recipe's training crop
LOADER_WORKERS = (0, 2)


def make_corpus(workdir: Path, hours: int) -> Path:
    """``hours`` one-hour recordings, each synthesised once: every corpus links to the same files."""
    from brr.data.synthetic import plan_recording, write_recording

    full = workdir / "recordings"
    full.mkdir(parents=True, exist_ok=True)
    corpus = workdir / f"corpus-{hours}h"
    corpus.mkdir(exist_ok=True)
    for index in range(hours):
        plan = plan_recording(SEED, index, RECORDING_MINUTES * 60)
        edf = full / f"{plan.name}.edf"
        if not edf.with_suffix(".csv_bi").is_file():  # written after the EDF
            write_recording(plan, edf)
        for source in (edf, edf.with_suffix(".csv_bi")):
            if not (corpus / source.name).exists():
                os.link(source, corpus / source.name)
    return corpus


def timed(command: list[str]) -> tuple[float, float, str]:
    """(wall s, peak RSS MB of the largest process of the tree, stdout) of ``command``."""
    started = time.perf_counter()
    result = subprocess.run(["/usr/bin/time", "-f", "%M", *command], check=True, capture_output=True,
                            text=True)
    wall_s = time.perf_counter() - started
    return wall_s, int(result.stderr.strip().splitlines()[-1]) / 1024, result.stdout


def prepare(workdir: Path, hours: int, workers: int) -> tuple[Path, list[dict]]:
    corpus = make_corpus(workdir, hours)
    store = workdir / f"store-{hours}h"
    shutil.rmtree(store, ignore_errors=True)
    rows = []
    for run in ("from scratch", "again (all reused)"):
        wall_s, rss_mb, out = timed([sys.executable, "-m", "brr.cli.prepare", str(corpus), "-o", str(store),
                                     "--workers", str(workers), "--quiet"])
        rows.append({"hours": hours, "run": run, "workers": workers, "wall_s": round(wall_s, 1),
                     "s_per_hour": round(wall_s / hours, 2), "peak_rss_mb": round(rss_mb, 1),
                     "summary": out.strip()})
        print(json.dumps(rows[-1]), flush=True)
    return store, rows


def read_windows(store: Path, window_s: float, workers: int, n_windows: int, batch_size: int) -> dict:
    """Read ``n_windows`` drawn windows of the whole store through the loader (run in a fresh process)."""
    from brr.train.dataset import TrainingWindows, epoch_loader
    from brr.train.store import open_store

    windows = TrainingWindows(open_store(store).recordings, window_s, stride_s=min(window_s, 10.0))
    drawn = windows.draw_epoch(n_windows, 0.5, seed=0, epoch=0)
    started = time.perf_counter()
    read = 0
    for signals, _, _ in epoch_loader(windows, drawn, batch_size, workers=workers):
        read += len(signals)
    seconds = time.perf_counter() - started
    return {"grid_windows": len(windows), "read": read, "seconds": seconds}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hours", type=int, nargs="+", default=[2, 50])
    parser.add_argument("--prepare-workers", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--windows", type=int, default=2048, help="windows each reading process draws")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workdir", default="/tmp/brr-store-bench")
    parser.add_argument("--out", default=str(RESULTS))
    parser.add_argument("--child", nargs=3, metavar=("STORE", "WINDOW_S", "WORKERS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        store, window_s, workers = Path(args.child[0]), float(args.child[1]), int(args.child[2])
        print(json.dumps(read_windows(store, window_s, workers, args.windows, args.batch_size)))
        return 0
    workdir = Path(args.workdir)
    prepare_rows, read_rows = [], []
    for hours in sorted(args.hours):
        store, rows = prepare(workdir, hours, args.prepare_workers)
        prepare_rows += rows
        for window_s in WINDOWS_S:
            for workers in LOADER_WORKERS:
                wall_s, rss_mb, out = timed([sys.executable, __file__, "--child", str(store), str(window_s),
                                             str(workers), "--windows", str(args.windows),
                                             "--batch-size", str(args.batch_size)])
                figures = json.loads(out.strip().splitlines()[-1])
                read_rows.append({"hours": hours, "window_s": window_s, "loader_workers": workers,
                                  "grid_windows": figures["grid_windows"], "windows_read": figures["read"],
                                  "windows_per_s": round(figures["read"] / figures["seconds"], 1),
                                  "process_wall_s": round(wall_s, 1), "peak_rss_mb": round(rss_mb, 1)})
                print(json.dumps(read_rows[-1]), flush=True)
    from brr.machine import cpu_model_and_flags, cpu_threads

    document = {"machine": {"cpu": cpu_model_and_flags()[0], "threads": cpu_threads()},
                "batch_size": args.batch_size, "windows_per_process": args.windows,
                "prepare": prepare_rows, "read": read_rows}
    table = "\n".join(
        [f"Window store: prepare and read ({document['machine']['cpu']}, {cpu_threads()} threads)", "",
         "| corpus h | prepare run | workers | wall s | s per h of EEG | peak RSS MB |",
         "|---|---|---|---|---|---|"]
        + [f"| {r['hours']} | {r['run']} | {r['workers']} | {r['wall_s']} | {r['s_per_hour']} | "
           f"{r['peak_rss_mb']} |" for r in prepare_rows]
        + ["", f"Reading {args.windows} random windows through epoch_loader, batches of {args.batch_size}:",
           "", "| corpus h | window s | loader workers | grid windows | windows/s | peak RSS MB |",
           "|---|---|---|---|---|---|"]
        + [f"| {r['hours']} | {r['window_s']:g} | {r['loader_workers']} | {r['grid_windows']} | "
           f"{r['windows_per_s']} | {r['peak_rss_mb']} |" for r in read_rows])
    write_report(Path(args.out), f"{utc_stamp()}-store", document, table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
