"""brr-pipeline WORKDIR: the main job end to end on data the project makes itself."""

from __future__ import annotations

import argparse
import sys

from rich.console import Console
from rich.table import Table

from brr.pipeline import PipelineSettings, run_pipeline


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="brr-pipeline", description=__doc__)
    parser.add_argument("workdir", help="folder for the corpus, checkpoint, engines and reports (reused on rerun)")
    parser.add_argument("--config", default="v3-small", help="detector preset or config file (default v3-small)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    console = Console()
    result = run_pipeline(PipelineSettings(workdir=args.workdir, config=args.config, seed=args.seed), console.print)
    table = Table(title="probe summary (one window through the detector)")
    for column in ("probe", "shape", "finite", "min", "max", "mean"):
        table.add_column(column)
    for row in result.probe_rows:
        table.add_row(row["probe"], str(row["shape"]), f"{row['finite_fraction']:.0%}",
                      f"{row['min']:.4g}", f"{row['max']:.4g}", f"{row['mean']:.4g}")
    console.print(table)
    return result.exit_code


if __name__ == "__main__":
    sys.exit(main())
