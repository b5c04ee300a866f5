"""``brr-calibrate``: fp16/bf16 precision plan or INT8 calibration (see :mod:`brr.calibration.run`)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from brr.calibration import SearchError, calibrate
from brr.calibration.run import PRECISIONS
from brr.cli.common import debug_parent, run_main
from brr.errors import EXIT_FAILED


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="brr-calibrate", parents=[debug_parent()],
        description="Find the fewest nodes an fp16/bf16 engine must keep in fp32 (precision_plan.json for "
        "brr-export --precision-plan), or calibrate INT8, on EDF windows; report error, FLOP share and speed.",
    )
    parser.add_argument("source", type=Path, help="checkpoint directory, export directory or fp32 .onnx file")
    parser.add_argument("--data", type=Path, nargs="+", required=True, metavar="EDF_OR_DIR",
                        help="EDF/BDF recordings or folders of them")
    parser.add_argument("--precision", choices=PRECISIONS, default="fp16")
    parser.add_argument("--atol", type=float, default=1e-2)
    parser.add_argument("--rtol", type=float, default=1e-2)
    parser.add_argument("--adversarial", action=argparse.BooleanOptionalAction, default=True,
                        help="also require the adversarial suite (flat, pops, saturation, zeros, mains)")
    parser.add_argument("--max-windows", type=int, default=8, help="EDF windows used (default 8)")
    parser.add_argument("--max-pins", type=int, default=64, help="give up beyond this many fp32 nodes")
    parser.add_argument("--out", type=Path, default=Path("calibration"), help="output directory")
    return parser


def run(args: argparse.Namespace) -> int:
    try:
        result = calibrate(args.source, args.data, args.precision, args.out, args.atol, args.rtol,
                           adversarial=args.adversarial, max_windows=args.max_windows,
                           max_pins=args.max_pins)
    except SearchError as exc:
        raise SearchError(f"no acceptable plan: {exc}") from exc
    print(f"brr-calibrate: {result.verdict}; report {result.report_paths['markdown']}")
    return 0 if result.passed else EXIT_FAILED


def main(argv: Sequence[str] | None = None) -> int:
    return run_main("brr-calibrate", build_parser(), run, argv, outputs=lambda args: [("--out", args.out)])


if __name__ == "__main__":
    sys.exit(main())
