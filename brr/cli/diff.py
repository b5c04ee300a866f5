"""``brr-diff``: compare engines with the fp32 PyTorch model stage by stage and find where NaNs start.

Exit status: 0 clean (per --fail-on), 1 failed per --fail-on, 2 usage error or missing dependency.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from brr.cli.common import (
    add_tolerance_options,
    add_window_options,
    command_parser,
    deprecated_alias,
    run_main,
)
from brr.diff import AdversarialWindows, ChainedWindows, EdfWindows, SyntheticWindows, run_diff, write_report
from brr.diff.verdict import FailOn
from brr.model import load_checkpoint


def build_parser() -> argparse.ArgumentParser:
    parser = command_parser(
        "brr-diff",
        "Compare brr-export engines (and PyTorch under autocast) with the fp32 PyTorch model: "
        "per stage, then per ONNX node where an input goes non-finite or diverges.",
    )
    parser.add_argument("checkpoint", help="checkpoint folder of the fp32 reference")
    parser.add_argument("engines", nargs="*",
                        help="brr-export artifact folders or the folder its --out wrote (every engine in it), "
                             "or torch:fp16 / torch:bf16")
    data = add_window_options(parser, required=False, synthetic_help="N seeded synthetic windows (default 2)",
                              max_windows=None)
    deprecated_alias(parser, "--inputs", data)
    add_tolerance_options(parser)
    parser.add_argument("--no-node-level", dest="node_level", action="store_false",
                        help="compare stages only; skip the search for the node where values go wrong")
    out = parser.add_argument("-o", "--out", default="diff-report", metavar="DIR", help="report folder")
    deprecated_alias(parser, "--report", out)
    parser.add_argument("--fail-on", type=FailOn, choices=list(FailOn), default=FailOn.NONFINITE,
                        help="what makes the exit status 1")
    return parser


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    if not args.engines:
        parser.error("give at least one engine (an artifact folder, torch:fp16 or torch:bf16)")
    window = load_checkpoint(args.checkpoint).config.window_samples
    loaders = [EdfWindows(args.data, window, max_windows=args.max_windows) if args.data
               else SyntheticWindows(args.synthetic or 2, window)]
    if args.adversarial:
        loaders.append(AdversarialWindows(window))
    report = run_diff(args.checkpoint, args.engines, ChainedWindows(loaders), args.atol, args.rtol,
                      fail_on=args.fail_on, node_level=args.node_level)
    report.data_arguments = ["--data", *map(str, args.data)] if args.data else ["--synthetic", str(args.synthetic or 2)]
    write_report(report, args.out)
    print(Path(args.out, "report.md").read_text(), end="")
    return 1 if report.failed else 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    return run_main("brr-diff", parser, lambda args: run(args, parser), argv,
                    outputs=lambda args: [("--out", args.out)])


if __name__ == "__main__":
    sys.exit(main())
