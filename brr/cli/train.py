"""``brr-train``: train the detector on an EDF + csv_bi corpus (see :mod:`brr.train`)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from brr.cli.common import command_parser, deprecated_alias, run_main
from brr.output_folder import check_output_folder
from brr.train import make_settings, train
from brr.train.distributed import processes_from_environment
from brr.train.precision import TrainPrecision


def build_parser() -> argparse.ArgumentParser:
    parser = command_parser(
        "brr-train",
        "Train the V3 detector. Settings come from --config (YAML), then the options below; "
        "checkpoints go to OUT/best and OUT/last. Several processes or machines: run it under torchrun "
        "(torchrun --nproc-per-node N -m brr.cli.train ...).",
    )
    parser.add_argument("--config", help="training config YAML (e.g. brr/train/configs/v3-small-synthetic.yaml)")
    parser.add_argument("--model", help="detector preset or config file (default v3-small)")
    parser.add_argument("--data", help="a window store made by brr-prepare, or a folder of EDF/BDF recordings with "
                                       ".csv_bi annotations (prepared into OUT/prepared first)")
    parser.add_argument("-o", "--out", help="checkpoint folder")
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--steps-per-epoch", type=int, help="0: one pass over the training windows")
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--lr", type=float)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--device", help="cpu or cuda[:N] (under torchrun: cuda, each process its local rank's GPU)")
    parser.add_argument("--precision", choices=[str(p) for p in TrainPrecision],
                        help="fp32, or autocast to bf16 / fp16 (with a loss scaler); weights stay fp32")
    parser.add_argument("--init", metavar="CKPT",
                        help="start from this checkpoint's weights with a fresh optimizer and schedule")
    parser.add_argument("--loader-workers", type=int, help="DataLoader worker processes (0: in this process)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--max-minutes", type=float, help="wall-clock budget; stops and saves OUT/last")
    parser.add_argument("--resume", action="store_true", default=None, help="continue from OUT/last")
    deprecated_alias(parser, "--no-progress", next(a for a in parser._actions if a.dest == "quiet"))
    return parser


def run(args: argparse.Namespace) -> int:
    options = {key: value for key, value in vars(args).items() if key not in ("config", "debug", "verbose", "quiet")}
    options["progress"] = False if args.quiet else None  # None: the config file's setting
    settings = make_settings(args.config, **options)
    # The output folder may come from the config file: checked once the settings are known.
    check_output_folder(settings.out, "--out")
    result = train(settings)
    if not processes_from_environment().main:
        return 0  # rank 0 speaks for the run
    best = result.best_metrics
    if best is not None:
        ev = best["validation"]["event"]
        print(f"best: epoch {best['epoch']} ({result.best_checkpoint}): event sensitivity {ev['sensitivity']}, "
              f"FA/24h {ev['fp_per_24h']}, F1 {ev['f1']}")
    print(f"last: {result.last_checkpoint}; {result.skipped_steps} non-finite step(s) skipped of {result.steps}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_main("brr-train", build_parser(), run, argv, mmap_threshold=None)


if __name__ == "__main__":
    sys.exit(main())
