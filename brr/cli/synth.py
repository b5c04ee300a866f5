"""``brr-synth``: write a synthetic EDF + csv_bi corpus (see :mod:`brr.data.synthetic`)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from brr.cli.common import command_parser, run_main
from brr.data.synthetic import write_corpus


def build_parser() -> argparse.ArgumentParser:
    parser = command_parser(
        "brr-synth",
        "Write synthetic 19-channel EEG recordings (TUH-style EDF) with csv_bi seizure "
        "annotations and a corpus.json index.",
    )
    parser.add_argument("out_dir", help="output folder (created if missing)")
    parser.add_argument("--recordings", type=int, default=1, help="number of recordings")
    parser.add_argument("--minutes", type=float, default=10.0, help="length of each recording")
    parser.add_argument("--seed", type=int, default=0, help="random seed; same seed, same bytes")
    parser.add_argument("--rate", type=int, default=256, help="sampling rate in Hz")
    parser.add_argument(
        "--seizures",
        type=int,
        default=None,
        help="seizures per recording (default: about 1-3 per 10 minutes, at least one)",
    )
    parser.add_argument("--mains", type=float, default=60.0, help="mains hum frequency in Hz")
    return parser


def run(args: argparse.Namespace) -> int:
    index = write_corpus(
        args.out_dir,
        args.recordings,
        args.minutes,
        seed=args.seed,
        rate=args.rate,
        seizures=args.seizures,
        mains_hz=args.mains,
    )
    print(f"wrote {args.recordings} recording(s) and {index}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_main("brr-synth", build_parser(), run, argv, outputs=lambda args: [("out_dir", args.out_dir)])


if __name__ == "__main__":
    sys.exit(main())
