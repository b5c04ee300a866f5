"""``brr-diff``: compare engines with the fp32 PyTorch model stage by stage and find where NaNs start.

A failing run leaves a repro bundle in ``<--out>/repro`` (``brr.diff.repro``); ``--save-repro DIR`` writes
one of every input. ``brr-diff --check DIR`` judges a bundle's saved outputs again, offline.

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
from brr.diff import ChainedWindows, EdfWindows, SyntheticWindows, run_diff, write_report
from brr.diff.check import check_saved
from brr.diff.inputs import fixed_windows
from brr.diff.repro import REPRO_FOLDER
from brr.diff.verdict import FailOn
from brr.model import load_checkpoint

DEFAULT_OUT = "diff-report"
CHECK_FOLDER = "check"  # a --check report, in the folder checked


def build_parser() -> argparse.ArgumentParser:
    parser = command_parser(
        "brr-diff",
        "Compare brr-export engines (and PyTorch under autocast) with the fp32 PyTorch model: "
        "per stage, then per ONNX node (and the nn.Module it came from) where an input goes non-finite or "
        "diverges. A failing run leaves a repro bundle in OUT/repro: the failing inputs, every runner's "
        "outputs on them, the origin node cut out as its own ONNX graph, and the Polygraphy lines that "
        "reproduce it.",
    )
    parser.add_argument("checkpoint", nargs="?", help="checkpoint folder of the fp32 reference")
    parser.add_argument("engines", nargs="*",
                        help="brr-export artifact folders or the folder its --out wrote (every engine in it), "
                             "or torch:fp16 / torch:bf16, or split:FOLDER (an artifact's front and rest graphs, "
                             "composed, as brr-infer --window-mode overlap serves them)")
    data = add_window_options(parser, required=False, synthetic_help="N seeded synthetic windows (default 2)",
                              max_windows=None)
    deprecated_alias(parser, "--inputs", data)
    add_tolerance_options(parser)
    parser.add_argument("--no-node-level", dest="node_level", action="store_false",
                        help="compare stages only; skip the search for the node where values go wrong")
    out = parser.add_argument("-o", "--out", metavar="DIR",
                              help=f"report folder (default {DEFAULT_OUT}; with --check, DIR/check)")
    deprecated_alias(parser, "--report", out)
    parser.add_argument("--fail-on", type=FailOn, choices=list(FailOn), default=None,
                        help="what makes the exit status 1 (default nonfinite; with --check, the live run's)")
    parser.add_argument("--save-repro", metavar="DIR",
                        help="write the repro bundle of every input to DIR (empty, new or an earlier "
                             "bundle), pass or fail; a failing run writes that of its failing inputs to "
                             "OUT/repro anyway")
    parser.add_argument("--check", metavar="DIR",
                        help="judge the outputs saved in DIR (a report folder with repro/, or a bundle) "
                             "again, offline: no engine or checkpoint; --atol/--rtol judge them at other "
                             "tolerances")
    return parser


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    if args.check:
        return check(args, parser)
    if args.checkpoint is None or not args.engines:
        parser.error("give the checkpoint and at least one engine (an artifact folder, torch:fp16 or "
                     "torch:bf16), or --check DIR")
    window = load_checkpoint(args.checkpoint).config.window_samples
    loaders = [EdfWindows(args.data, window, max_windows=args.max_windows) if args.data
               else SyntheticWindows(args.synthetic or 2, window)]
    if args.adversarial:
        loaders.append(fixed_windows(window))
    out = args.out or DEFAULT_OUT
    report = run_diff(args.checkpoint, args.engines, ChainedWindows(loaders), args.atol, args.rtol,
                      fail_on=args.fail_on or FailOn.NONFINITE, node_level=args.node_level,
                      repro_dir=args.save_repro or Path(out, REPRO_FOLDER),
                      repro_every_input=args.save_repro is not None)
    report.data_arguments = ["--data", *map(str, args.data)] if args.data else ["--synthetic", str(args.synthetic or 2)]
    write_report(report, out)
    print(Path(out, "report.md").read_text(), end="")
    return 1 if report.failed else 0


def check(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """``--check DIR``: the saved outputs judged again; the report goes to DIR/check unless --out says."""
    if args.checkpoint or args.engines or args.save_repro:
        parser.error("--check takes no checkpoint, engine or --save-repro: it judges what DIR saved")
    report = check_saved(args.check, args.atol, args.rtol, args.fail_on)
    out = args.out or Path(args.check, CHECK_FOLDER)
    write_report(report, out)
    print(Path(out, "report.md").read_text(), end="")
    return 1 if report.failed else 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    return run_main("brr-diff", parser, lambda args: run(args, parser), argv,
                    outputs=lambda args: [("--out", args.out), ("--save-repro", args.save_repro)])


if __name__ == "__main__":
    sys.exit(main())
