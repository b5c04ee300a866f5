"""Peak RSS of the ``brr-infer --executor ray`` driver against the number of recordings.

    python benchmarks/ray_driver_memory.py --recordings 20 200 --workdir /tmp/brr-ray-bench

Each count runs ``brr-infer`` in its own fresh process (so its peak RSS is that run's alone) on a
local Ray instance that the driver starts, over that many copies of one 60 s synthetic recording,
with a tiny randomly initialised detector (every stage of ``v3-small``, each at its smallest), so
that 200 recordings take minutes on two cores. The Ray processes (raylet, GCS, workers) are not the
driver and are not counted. ``--unbounded`` submits every recording at once, as brr-infer did before
its submission was bounded, for comparison. Figures go to ``benchmarks/results/<UTC>-ray-driver.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from report_files import utc_stamp, write_report

RESULTS = Path(__file__).parent / "results"
# v3-small with every stage at its smallest: what the driver holds does not depend on the model's size.
TINY = {"base": "v3-small", "name": "ray-bench-tiny", "tcn_channels": [8], "tcn_out": 8, "electrode_dim": 8,
        "node_mamba": {"d_model": 8, "d_state": 4, "headdim": 4, "layers": 1},
        "edge_mamba": {"d_model": 16, "d_state": 4, "headdim": 4, "layers": 0},
        "gnn_layers": 1, "k_eigenvectors": 4}


def prepare(workdir: Path, count: int) -> tuple[Path, Path]:
    """The tiny checkpoint and a folder of ``count`` recordings (copies of one), each made once."""
    import torch

    from brr.data.synthetic import plan_recording, write_recording
    from brr.model import build_detector, save_checkpoint

    checkpoint = workdir / "ckpt-tiny"
    if not (checkpoint / "config.json").is_file():
        torch.manual_seed(0)
        save_checkpoint(build_detector(TINY).eval(), checkpoint)
    one = workdir / "one.edf"
    if not one.is_file():
        write_recording(plan_recording(seed=0, index=0, duration_s=60), one)
    inputs = workdir / f"in-{count}"
    inputs.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        copy = inputs / f"rec_{index:05d}.edf"
        if not copy.is_file():
            shutil.copyfile(one, copy)
    return checkpoint, inputs


def measure(workdir: Path, count: int, unbounded: bool) -> dict:
    """Run brr-infer over ``count`` recordings in this process; return its figures (call in a fresh process)."""
    from brr.cli.infer import main as infer_main
    from brr.resources import peak_rss_mb
    from brr.runtime import executors

    if unbounded:
        executors.IN_FLIGHT_PER_CPU = count
    checkpoint, inputs = prepare(workdir, count)
    out = workdir / f"out-{count}{'-unbounded' if unbounded else ''}"
    started = time.perf_counter()
    code = infer_main([str(checkpoint), str(inputs), "--out", str(out), "--stride", "60", "--executor", "ray",
                       "--overwrite", "--quiet"])
    wall_s = time.perf_counter() - started
    summary = json.loads((out / "summary.json").read_text())
    return {
        "recordings": count,
        "submission": "all at once" if unbounded else f"{executors.IN_FLIGHT_PER_CPU} per cluster CPU",
        "exit_code": code,
        "ok": summary["totals"]["ok"],
        "wall_s": round(wall_s, 1),
        "driver_peak_rss_mb": round(peak_rss_mb(), 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recordings", type=int, nargs="+", default=[20, 200])
    parser.add_argument("--unbounded", action="store_true", help="also measure submitting every recording at once")
    parser.add_argument("--workdir", default="/tmp/brr-ray-bench")
    parser.add_argument("--out", default=str(RESULTS))
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    if args.child:
        print(json.dumps(measure(workdir, args.recordings[0], args.unbounded)))
        return 0
    for count in args.recordings:  # synthesis outside the measured processes
        prepare(workdir, count)
    rows = []
    for unbounded in (False, True) if args.unbounded else (False,):
        for count in args.recordings:
            command = [sys.executable, __file__, "--child", "--recordings", str(count), "--workdir", str(workdir)]
            result = subprocess.run(command + (["--unbounded"] if unbounded else []), check=True,
                                    capture_output=True, text=True)
            rows.append(json.loads(next(line for line in result.stdout.splitlines() if line.startswith('{"'))))
            print(json.dumps(rows[-1]), flush=True)
    table = "\n".join(
        ["brr-infer --executor ray, driver peak RSS (local Ray instance, tiny detector, 60 s recordings)", "",
         "| recordings | submission | ok | wall s | driver peak RSS MB |", "|---|---|---|---|---|"]
        + [f"| {r['recordings']} | {r['submission']} | {r['ok']} | {r['wall_s']} | {r['driver_peak_rss_mb']} |"
           for r in rows])
    write_report(Path(args.out), f"{utc_stamp()}-ray-driver", rows, table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
