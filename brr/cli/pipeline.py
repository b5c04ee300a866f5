"""brr-pipeline WORKDIR: the main job end to end on data the project makes itself.

Makes a synthetic corpus, trains (or reuses) a checkpoint, prints the probe summary of one window,
exports and verifies the fp16 engine (and bf16 OpenVINO where the CPU has bf16), then detects
seizures in the held-out recordings and scores them against their annotations.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from rich.console import Console
from rich.table import Table
from rich.text import Text

from brr.cli.common import command_parser, run_main
from brr.pipeline import PipelineSettings, run_pipeline


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.3g}"


def build_parser() -> argparse.ArgumentParser:
    parser = command_parser("brr-pipeline", __doc__)
    parser.add_argument("workdir", help="folder for the corpus, checkpoint, engines and reports (reused on rerun)")
    parser.add_argument("--config", default="v3-small", help="detector preset or config file")
    parser.add_argument("--seed", type=int, default=0)
    return parser


def run(args: argparse.Namespace) -> int:
    console = Console()
    say = lambda line: console.print(line, markup=False, highlight=False)  # noqa: E731  (lines carry [stage] tags)
    result = run_pipeline(PipelineSettings(workdir=args.workdir, config=args.config, seed=args.seed))

    table = Table(title="probe summary (one window through the detector)")
    for column in ("probe", "shape", "finite", "min", "max", "mean"):
        table.add_column(column)
    for row in result.probe_rows:
        table.add_row(row["probe"], str(row["shape"]), f"{row['finite_fraction']:.0%}",
                      f"{row['min']:.4g}", f"{row['max']:.4g}", f"{row['mean']:.4g}")
    console.print(table)

    for name, verification in result.verifications.items():
        say(f"[export] {name}: {verification.summary()}")

    summary = result.inference
    events = Table(title=f"seizure events ({summary.engine})")
    for column in ("recording", "status", "start s", "stop s", "confidence"):
        events.add_column(column)
    for entry in summary.entries:
        if entry.status != "ok" or not entry.events:
            events.add_row(Text(entry.name), entry.status if entry.status != "ok" else "no events", "", "", "")
        for event in entry.events:
            events.add_row(Text(entry.name), entry.status, f"{event.start_s:.1f}", f"{event.stop_s:.1f}",
                           f"{event.confidence:.2f}")
    console.print(events)
    if summary.scores:
        for level in ("event", "sample"):
            s = summary.scores[level]
            say(f"[score] {level}: sensitivity {_fmt(s['sensitivity'])}, precision {_fmt(s['precision'])}, "
                          f"F1 {_fmt(s['f1'])}, false alarms/24h {_fmt(s['fp_per_24h'])}")
    say(f"outputs: {summary.out_dir}; exit code {result.exit_code}")
    say(result.verdict)
    return result.exit_code


def main(argv: Sequence[str] | None = None) -> int:
    return run_main("brr-pipeline", build_parser(), run, argv, outputs=lambda args: [("workdir", args.workdir)])


if __name__ == "__main__":
    sys.exit(main())
