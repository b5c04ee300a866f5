"""``brr-prepare``: preprocess an EDF + csv_bi corpus once into a window store for training (see
:mod:`brr.train.store`)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from brr.cli.common import command_parser, run_main
from brr.errors import EXIT_FAILED, EXIT_OK
from brr.machine import cpu_threads
from brr.train.store import prepare_store


def build_parser() -> argparse.ArgumentParser:
    parser = command_parser(
        "brr-prepare",
        "Preprocess every EDF/BDF recording of CORPUS (each with a .csv_bi of the same stem) once into the "
        "window store STORE, which brr-train reads (--data STORE). Run it again after the corpus changes: "
        "unchanged recordings are reused, changed ones prepared again. A recording that cannot be prepared "
        "is reported and left out (exit status 1, after preparing the others).",
    )
    parser.add_argument("corpus", type=Path, metavar="CORPUS",
                        help="folder of EDF/BDF recordings with .csv_bi files")
    parser.add_argument("-o", "--out", type=Path, required=True, metavar="STORE", help="store folder")
    parser.add_argument("--mains-hz", type=float, default=60.0, help="mains frequency of the notch filter")
    parser.add_argument("--workers", type=int, default=cpu_threads(), help="recordings prepared in parallel")
    return parser


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    if args.workers < 1:
        parser.error(f"--workers must be >= 1, got {args.workers}")
    result = prepare_store(args.corpus, args.out, args.mains_hz, workers=args.workers,
                           progress=not args.quiet)
    print(f"{result.store}: {result.prepared} prepared, {result.reused} reused, {len(result.failed)} failed")
    return EXIT_FAILED if result.failed else EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    return run_main("brr-prepare", parser, lambda args: run(args, parser), argv,
                    outputs=lambda args: [("--out", args.out)])


if __name__ == "__main__":
    sys.exit(main())
