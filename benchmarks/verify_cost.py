"""Wall time and peak memory of verification: brr-diff, brr-export with its verification, brr-calibrate.

    python benchmarks/verify_cost.py --configs v3-small,v3 --workdir /tmp/brr-verify-cost

Each command runs in its own process; its peak RSS is that of its whole process tree (sampled every
0.1 s with psutil: children included), beside the wall time and the load average it ran under.
Inputs are made once in the workdir: a randomly initialised checkpoint per configuration, its fp16
ONNX Runtime engine exported without a precision plan (what verification must be able to diagnose),
a checkpoint with a planted fp16 overflow (one TCN layer's weights scaled until its fp32 output
passes 65504), and two 3-minute synthetic recordings. Targets (issue: bounded verification):

| command                                            | v3-small          | v3                 |
| brr-diff CKPT ENGINE_FP16 --synthetic 2 --adversarial | <= 1.5 GB, 2 min | <= 6 GB, 10 min    |
| brr-export CKPT --engine fp16 --backend onnxruntime   | <= 1.5 GB, 2 min | <= 6 GB, 8 min     |
| brr-calibrate PLANTED --data EDF --precision fp16     | <= 5 min          | <= 30 min (2 windows) |

and the memory bound: brr-diff's peak RSS on 8 synthetic windows within 10 % of its peak on 2.
Results: ``benchmarks/results/verify-cost-<time>.json`` and ``.md``.
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

import psutil

RESULTS = Path(__file__).with_name("results")
sys.path.insert(0, str(Path(__file__).parent))
from machine import cpu_info  # noqa: E402
from report_files import utc_stamp, write_report  # noqa: E402

GB = 1024.0
TARGETS = {  # (command, config) -> (peak RSS MB, wall s)
    ("diff", "v3-small"): (1.5 * GB, 120), ("diff", "v3"): (6 * GB, 600),
    ("export", "v3-small"): (1.5 * GB, 120), ("export", "v3"): (6 * GB, 480),
    ("calibrate", "v3-small"): (None, 300), ("calibrate", "v3"): (None, 1800),
}


def measure(argv: list[str], log: Path) -> dict:
    """Run ``argv``; wall time, exit code and the peak summed RSS of its process tree."""
    started = time.perf_counter()
    load = os.getloadavg()[0]
    with open(log, "w") as out:
        process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
        root = psutil.Process(process.pid)
        peak = 0
        while process.poll() is None:
            try:
                tree = [root, *root.children(recursive=True)]
                peak = max(peak, sum(p.memory_info().rss for p in tree if p.is_running()))
            except psutil.Error:
                pass
            time.sleep(0.1)
    return {"argv": [str(a) for a in argv], "exit_code": process.returncode, "wall_s": round(time.perf_counter() - started, 1),
            "peak_rss_mb": round(peak / 2**20), "load_average_at_start": round(load, 2), "log": str(log)}


def prepare(workdir: Path, config: str) -> dict[str, Path]:
    """Checkpoint, planted-overflow checkpoint, unplanned fp16 engine and EDF recordings for ``config``."""
    import torch

    from brr.data.synthetic import write_corpus
    from brr.model import build_detector, save_checkpoint

    base = workdir / config
    paths = {"checkpoint": base / "checkpoint", "planted": base / "planted", "edf": workdir / "edf",
             "export": base / "export-fp16"}
    if not (paths["checkpoint"] / "config.json").is_file():
        torch.manual_seed(0)
        save_checkpoint(build_detector(config).eval(), paths["checkpoint"])
    if not (paths["planted"] / "config.json").is_file():
        save_checkpoint(planted_overflow(config), paths["planted"])
    if not any(paths["edf"].glob("*.edf")):
        write_corpus(paths["edf"], recordings=2, minutes=3, seed=11)
    if not any(paths["export"].rglob("manifest.json")):
        subprocess.run(["brr-export", paths["checkpoint"], "--out", paths["export"], "--engine", "fp16",
                        "--backend", "onnxruntime", "--precision-plan", "none", "--no-verify"], check=True,
                       stdout=subprocess.DEVNULL)
    paths["engine"] = next(p.parent for p in paths["export"].rglob("manifest.json") if "fp16" in p.parent.name)
    return paths


def planted_overflow(config: str):
    """An initialised model whose first TCN layer is scaled until the TCN's fp32 output passes fp16's 65504."""
    import torch

    from brr.model import build_detector

    torch.manual_seed(0)
    model = build_detector(config).eval()
    x = torch.randn(1, 19, model.config.window_samples)
    first = next(p for n, p in model.named_parameters() if n.startswith("tcn.") and "original0" in n)
    with torch.no_grad():
        for _ in range(40):
            _, probes = model(x, return_probes=True)
            if float(probes["tcn"].abs().max()) > 1.5e5:
                return model
            first.mul_(2.0)
    raise RuntimeError("could not plant an fp16 overflow in the TCN")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", default="v3-small", help="comma-separated (v3-small, v3)")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/brr-verify-cost"))
    parser.add_argument("--skip", default="", help="comma-separated commands to skip (diff, export, calibrate, bound)")
    args = parser.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    args.workdir.mkdir(parents=True, exist_ok=True)
    rows = []
    for config in args.configs.split(","):
        paths = prepare(args.workdir, config)
        logs = args.workdir / config / "logs"
        logs.mkdir(exist_ok=True)
        commands = {
            "diff": ["brr-diff", paths["checkpoint"], paths["engine"], "--synthetic", "2", "--adversarial",
                     "--out", args.workdir / config / "diff"],
            "export": ["brr-export", paths["checkpoint"], "--out", args.workdir / config / "export-verified",
                       "--engine", "fp16", "--backend", "onnxruntime"],
            "calibrate": ["brr-calibrate", paths["planted"], "--data", paths["edf"], "--precision", "fp16",
                          "--out", args.workdir / config / "calibration"]
                         + (["--max-windows", "2"] if config == "v3" else []),
        }
        for name, argv in commands.items():
            if name in skip:
                continue
            shutil.rmtree(argv[argv.index("--out") + 1] if "--out" in argv else argv[-1], ignore_errors=True)
            row = {"command": name, "config": config, **measure(argv, logs / f"{name}.log")}
            rss, wall = TARGETS[name, config]
            row["target"] = {"peak_rss_mb": rss, "wall_s": wall}
            row["met"] = (rss is None or row["peak_rss_mb"] <= rss) and row["wall_s"] <= wall
            rows.append(row)
            print(json.dumps(row), flush=True)
        if "bound" not in skip:
            bound = {}
            for windows in (2, 8):
                bound[windows] = measure(["brr-diff", paths["checkpoint"], paths["engine"], "--synthetic", str(windows),
                                          "--no-node-level", "--no-adversarial",
                                          "--out", args.workdir / config / f"diff-{windows}"],
                                         logs / f"bound-{windows}.log")
            ratio = bound[8]["peak_rss_mb"] / max(bound[2]["peak_rss_mb"], 1)
            rows.append({"command": "bound", "config": config, "peak_rss_mb_2_windows": bound[2]["peak_rss_mb"],
                         "peak_rss_mb_8_windows": bound[8]["peak_rss_mb"], "ratio": round(ratio, 3),
                         "met": ratio <= 1.10, "runs": bound})
            print(json.dumps(rows[-1]), flush=True)
    document = {"machine": cpu_info(), "rows": rows}
    lines = [f"CPU: {document['machine']['cpu_model']}", "", "| command | config | wall s | peak RSS MB | target | met | load |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["command"] == "bound":
            lines.append(f"| diff 8 vs 2 windows | {r['config']} | | {r['peak_rss_mb_8_windows']} vs "
                         f"{r['peak_rss_mb_2_windows']} | <= 1.10x | {r['met']} ({r['ratio']}x) | |")
        else:
            t = r["target"]
            target = f"{t['peak_rss_mb'] or '-'} MB, {t['wall_s']} s"
            lines.append(f"| {r['command']} (exit {r['exit_code']}) | {r['config']} | {r['wall_s']} | "
                         f"{r['peak_rss_mb']} | {target} | {r['met']} | {r['load_average_at_start']} |")
    write_report(RESULTS, f"verify-cost-{utc_stamp()}", document, "\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
