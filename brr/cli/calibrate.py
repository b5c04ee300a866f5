"""``brr-calibrate``: fp16/bf16 precision plan or INT8 calibration (see :mod:`brr.calibration.run`).

Exit status: 0 the plan is accepted on every window; 1 it is not (the best verified plan is written,
marked with the windows it fails), or no plan could be made; 2 usage error or unusable input.
Progress goes to stderr, one line per window of an evaluation, per tolerance-search step and per pin.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from brr.calibration import SearchError, calibrate
from brr.calibration.run import PRECISIONS
from brr.cli.common import add_tolerance_options, add_window_options, command_parser, run_main
from brr.errors import EXIT_FAILED


def build_parser() -> argparse.ArgumentParser:
    parser = command_parser(
        "brr-calibrate",
        "Find the fewest nodes an fp16/bf16 engine must keep in fp32 (precision_plan.json for "
        "brr-export --precision-plan), or calibrate INT8, on EDF or synthetic windows; report error, FLOP share and speed.",
    )
    parser.add_argument("source", type=Path, help="checkpoint directory, export directory or fp32 .onnx file")
    add_window_options(parser, required=True, synthetic_help="N seeded synthetic windows instead (fp16/bf16)",
                       max_windows=8)
    parser.add_argument("--precision", choices=PRECISIONS, default="fp16")
    add_tolerance_options(parser)
    parser.add_argument("--max-pins", type=int, default=64, help="give up beyond this many fp32 nodes")
    parser.add_argument("--budget", type=float, default=None, metavar="MINUTES",
                        help="stop searching MINUTES after the fp32 pass starts and write the best verified plan so "
                        "far, marked with the windows it is not accepted on (exit 1 if any); the fp32 pass and one "
                        "evaluation of its plan always run")
    parser.add_argument("-o", "--out", type=Path, default=Path("calibration"), help="output directory")
    return parser


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    if args.synthetic is not None and args.synthetic < 1:
        parser.error(f"--synthetic needs at least 1 window, got {args.synthetic}")
    if args.budget is not None and args.budget <= 0:
        parser.error(f"--budget must be a positive number of minutes, got {args.budget:g}")
    try:
        result = calibrate(args.source, args.data, args.precision, args.out, args.atol, args.rtol,
                           adversarial=args.adversarial, max_windows=args.max_windows,
                           max_pins=args.max_pins, budget_minutes=args.budget, synthetic=args.synthetic)
    except SearchError as exc:
        raise SearchError(f"no acceptable plan: {exc}") from exc
    accepted = "accepted on every window" if result.passed else "NOT ACCEPTED (best verified plan written)"
    print(f"brr-calibrate: {result.verdict}, {accepted}; report {result.report_paths['markdown']}")
    return 0 if result.passed else EXIT_FAILED


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    return run_main("brr-calibrate", parser, lambda args: run(args, parser), argv,
                    outputs=lambda args: [("--out", args.out)])


if __name__ == "__main__":
    sys.exit(main())
