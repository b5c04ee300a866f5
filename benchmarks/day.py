"""A day of EEG through ``brr-infer`` as a user runs it: wall time and peak RSS per stride.

    python benchmarks/day.py ENGINE [--minutes 1440] [--strides default 60] [--seed 21] [--label TEXT]

ENGINE is what ``brr-infer`` takes: a checkpoint, an exported engine or a ``brr-export --out`` folder. One
synthetic recording of ``--minutes`` (``brr.data.synthetic``, as ``brr-synth --seed``) is written once into the
workdir; then each stride runs ``brr-infer ENGINE RECORDING -o OUT -q --overwrite [--stride S]`` in a fresh
process under ``/usr/bin/time -f "%e %M"``, every other setting at brr-infer's default (``default`` is its
default stride, the window mode ``auto`` chooses for it recorded as chosen). The figures per run: wall seconds
and peak RSS from ``time``, windows, window mode and events from the run's ``summary.json``, and the minutes a
24-hour recording takes at that rate. Figures go to ``benchmarks/results/<UTC>-day.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from report_files import utc_stamp, write_report

from brr.cli.infer import DEFAULTS
from brr.machine import cpu_model_and_flags, cpu_threads
from brr.runtime.run import SUMMARY_FILE

RESULTS = Path(__file__).parent / "results"
DEFAULT_STRIDE = "default"
TIME = "/usr/bin/time"


def recording(workdir: Path, minutes: float, seed: int) -> Path:
    """The synthetic recording of ``minutes`` for ``seed``, written once."""
    from brr.data.synthetic import plan_recording, write_recording

    edf = workdir / f"synth_s{seed}_{minutes:g}min.edf"
    if not edf.is_file():
        write_recording(plan_recording(seed=seed, index=0, duration_s=int(minutes * 60)), edf)
    return edf


def run_stride(engine: str, edf: Path, stride: str, out: Path) -> dict:
    """One brr-infer run in a fresh process, with its figures."""
    command = ["brr-infer", engine, str(edf), "-o", str(out), "-q", "--overwrite"]
    if stride != DEFAULT_STRIDE:
        command += ["--stride", stride]
    with tempfile.NamedTemporaryFile("r", suffix=".time") as measured:
        subprocess.run([TIME, "-o", measured.name, "-f", "%e %M", *command], check=True)
        wall_s, peak_kb = measured.read().split()[-2:]
    summary = json.loads((out / SUMMARY_FILE).read_text())
    entry = summary["recordings"][0]
    if entry["status"] != "ok":
        raise RuntimeError(f"brr-infer failed on {edf}: {entry['error']}")
    stride_s = float(summary["settings"]["stride_s"])
    recording_hours = entry["duration_s"] / 3600.0
    return {
        "stride": stride,
        "stride_s": stride_s,
        "window_mode": summary["settings"]["window_mode"],
        "command": command,
        "windows": entry["n_windows"],
        "events": entry["n_events"],
        "recording_s": round(entry["time_s"], 1),
        "wall_s": float(wall_s),
        "peak_rss_mb": round(int(peak_kb) / 1024.0, 1),
        "minutes_per_24h": round(float(wall_s) / 60.0 * 24.0 / recording_hours, 1),
    }


def table(document: dict) -> str:
    machine = document["machine"]
    lines = [f"brr-infer on a {document['minutes']:g}-minute recording, {document['engine']} ({machine['cpu']}, "
             f"{machine['threads']} threads; {', '.join(machine['flags'])})", "",
             "| stride | mode | windows | wall s | min per 24 h | peak RSS MB | events |", "|---|---|---|---|---|---|---|"]
    for run in document["runs"]:
        stride = f"{run['stride_s']:g} s" + (" (default)" if run["stride"] == DEFAULT_STRIDE else "")
        lines.append(f"| {stride} | {run['window_mode']} | {run['windows']} | {run['wall_s']:.0f} | "
                     f"{run['minutes_per_24h']} | {run['peak_rss_mb']} | {run['events']} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("engine")
    parser.add_argument("--minutes", type=float, default=1440.0)
    parser.add_argument("--strides", nargs="+", default=[DEFAULT_STRIDE, "60"],
                        help=f"seconds, or '{DEFAULT_STRIDE}' for brr-infer's ({DEFAULTS.stride_s:g} s)")
    parser.add_argument("--seed", type=int, default=21)
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "brr-day")
    parser.add_argument("--label", default="", help="what the engine is, for the table's title")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if not Path(TIME).is_file():
        parser.error(f"{TIME} is needed for peak RSS (GNU time)")
    args.workdir.mkdir(parents=True, exist_ok=True)
    edf = recording(args.workdir, args.minutes, args.seed)
    model, flags = cpu_model_and_flags()
    document = {"machine": {"cpu": model, "flags": flags, "threads": cpu_threads()}, "engine": args.label or args.engine,
                "minutes": args.minutes, "seed": args.seed, "runs": []}
    for stride in args.strides:
        out = args.workdir / f"out-{stride}"
        document["runs"].append(run_stride(args.engine, edf, stride, out))
        shutil.rmtree(out)
        print(json.dumps(document["runs"][-1]), flush=True)
    write_report(args.out, f"{utc_stamp()}-day", document, table(document))
    return 0


if __name__ == "__main__":
    sys.exit(main())
