"""Wall time and peak RSS of ``brr-calibrate`` on a detector with a planted fp16 overflow.

    python benchmarks/calibrate_cost.py --config v3-small --workdir /tmp/brr-cal
    python benchmarks/calibrate_cost.py --config v3-small --memory        # peak RSS, 2 vs 8 windows
    python benchmarks/calibrate_cost.py --config v3 --max-windows 2
    python benchmarks/calibrate_cost.py --config v3-small --budget 1         # the best verified plan at 1 min

The checkpoint is the initialised detector with one TCN layer's overflow planted: the weights and
bias of ``tcn.to_width`` times ``--factor`` and those of ``tcn.mix`` divided by it, so ``to_width``'s
output leaves fp16's range (tens of thousands to millions) while everything after it, and fp32,
is unchanged. The data are two 3-minute ``brr-synth`` recordings. Each command runs in its own
process under ``/usr/bin/time -f "%e %M"`` (its wall time and peak RSS); the 1-minute load average
is recorded before and after, since the machine may be shared. ``--memory`` calibrates the fp32
export folder (``brr-export --engine fp32``) instead of the checkpoint, so that the peak is the
search's, not that of exporting to ONNX inside the same process. Writes
``benchmarks/results/calibration-<config>/cost.json`` and ``cost.md`` with the run's
``precision_plan.json`` and ``calibration_report.{json,md}`` (a budgeted run: ``budget-<N>min.*`` and
a ``budget-<N>min/`` folder; ``--memory``: ``memory.json``, ``memory.md``).

Targets (issue 14): v3-small, defaults, <= 5 min; v3, two EDF windows, <= 30 min; peak RSS for 8
windows within 10 % of 2 windows.
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

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from report_files import utc_stamp, write_report  # noqa: E402

TIME = "/usr/bin/time"


def planted_checkpoint(config: str, factor: float, directory: Path) -> Path:
    """The initialised detector with tcn.to_width x factor and tcn.mix / factor (fp32 output unchanged)."""
    import torch

    from brr.model import build_detector, save_checkpoint

    if (directory / "config.json").is_file():
        return directory
    torch.manual_seed(0)
    model = build_detector(config).eval()
    with torch.no_grad():
        model.tcn.to_width.weight.mul_(factor)
        model.tcn.to_width.bias.mul_(factor)
        model.tcn.mix.weight.div_(factor)
    return save_checkpoint(model, directory, extra={"planted": f"tcn.to_width x {factor:g}, tcn.mix / {factor:g}"})


def recordings(directory: Path) -> Path:
    if not list(directory.glob("*.edf")):
        subprocess.run(["brr-synth", "--recordings", "2", "--minutes", "3", str(directory)], check=True)
    return directory


def timed(command: list[str], log: Path) -> dict:
    """Run ``command`` in its own process under /usr/bin/time: exit code, wall s, peak RSS MB, load."""
    load_before = os.getloadavg()[0]
    figures = log.with_suffix(".time")
    started = time.perf_counter()
    with open(log, "w") as stderr:
        done = subprocess.run([TIME, "-o", str(figures), "-f", "%e %M", *command], check=False,
                              stdout=subprocess.DEVNULL, stderr=stderr)
    wall = time.perf_counter() - started
    elapsed, peak_kb = figures.read_text().split()[-2:]
    return {"command": " ".join(command), "exit_code": done.returncode, "wall_s": float(elapsed),
            "measured_wall_s": round(wall, 1), "peak_rss_mb": round(int(peak_kb) / 1024),
            "load_average_1min_before": round(load_before, 2), "load_average_1min_after": round(os.getloadavg()[0], 2),
            "log": str(log)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="v3-small")
    parser.add_argument("--factor", type=float, default=20000.0)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/brr-calibration-bench"))
    parser.add_argument("--max-windows", type=int, default=None, help="passed to brr-calibrate (default: its own)")
    parser.add_argument("--budget", type=float, default=None, help="passed to brr-calibrate, minutes")
    parser.add_argument("--memory", action="store_true",
                        help="instead: peak RSS of --synthetic 2 vs --synthetic 8 (no adversarial windows)")
    args = parser.parse_args()
    work = args.workdir / args.config
    work.mkdir(parents=True, exist_ok=True)
    checkpoint = planted_checkpoint(args.config, args.factor, work / "checkpoint")
    results = HERE / "results" / f"calibration-{args.config}"
    stamp = utc_stamp()
    doc = {"stamp": stamp, "config": args.config, "planted": f"tcn.to_width x {args.factor:g}", "runs": [],
           "cpu_count": os.cpu_count()}
    if args.memory:
        export = work / "export"
        if not (export / "onnx-standard" / "manifest.json").is_file():
            subprocess.run(["brr-export", str(checkpoint), "--out", str(export), "--engine", "fp32", "--ops", "standard",
                            "--backend", "onnxruntime", "--no-verify"], check=True, stdout=subprocess.DEVNULL)
        for count in (2, 8):
            out = work / f"synthetic-{count}"
            shutil.rmtree(out, ignore_errors=True)
            doc["runs"].append({"windows": count} | timed(
                ["brr-calibrate", str(export / "onnx-standard"), "--synthetic", str(count), "--no-adversarial",
                 "--precision",
                 "fp16", "--out", str(out)], work / f"synthetic-{count}.log"))
        two, eight = (r["peak_rss_mb"] for r in doc["runs"])
        doc["peak_rss_ratio_8_vs_2"] = round(eight / two, 3)
        name = "memory"
    else:
        data = recordings(work / "edf")
        out = work / "calibration"
        shutil.rmtree(out, ignore_errors=True)
        command = ["brr-calibrate", str(checkpoint), "--data", str(data), "--precision", "fp16", "--out", str(out)]
        command += ["--max-windows", str(args.max_windows)] if args.max_windows else []
        command += ["--budget", f"{args.budget:g}"] if args.budget else []
        run = timed(command, work / "calibration.log")
        report = json.loads((out / "calibration_report.json").read_text()) if (out / "calibration_report.json").is_file() \
            else {}
        run |= {"accepted": report.get("accepted"), "pinned": report.get("pinned_count"),
                "evaluations": report.get("search", {}).get("evaluations"), "stopped": report.get("stopped"),
                "not_accepted_on": report.get("not_accepted_on")}
        doc["runs"].append(run)
        # A budgeted run's files go beside the default run's, in their own folder.
        name = "cost" if args.budget is None else f"budget-{args.budget:g}min"
        kept = results if args.budget is None else results / name
        kept.mkdir(parents=True, exist_ok=True)
        for file in ("precision_plan.json", "calibration_report.json", "calibration_report.md"):
            if (out / file).is_file():
                shutil.copy(out / file, kept / file)
    lines = [f"# brr-calibrate cost: {args.config} ({stamp})", "", f"planted: {doc['planted']}", "",
             "| command | exit | wall s | peak RSS MB | load avg before/after |", "|---|---|---|---|---|"]
    for run in doc["runs"]:
        lines.append(f"| `{run['command']}` | {run['exit_code']} | {run['wall_s']:.0f} | {run['peak_rss_mb']} | "
                     f"{run['load_average_1min_before']} / {run['load_average_1min_after']} |")
    if "peak_rss_ratio_8_vs_2" in doc:
        lines += ["", f"peak RSS, 8 windows / 2 windows: {doc['peak_rss_ratio_8_vs_2']:.3f}"]
    write_report(results, name, doc, "\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
