"""``brr-export``: export a checkpoint to ONNX and build one engine (see :mod:`brr.export.artifact`)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from brr.diff.verify import verify_engine
from brr.export.artifact import ExportRequest, export_artifacts
from brr.export.engines import BACKEND_CHOICES, EngineBuildError, TensorRTUnavailable
from brr.export.engines.tensorrt import parse_batch_range
from brr.export.precision_plan import PrecisionPlanError
from brr.model import CheckpointError, load_checkpoint
from brr.ops.registry import OPS_MODES
from brr.resources import return_freed_memory

EXIT_DIVERGED = 1
EXIT_UNAVAILABLE = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="brr-export",
        description="Export a checkpoint to fp32 ONNX (opset 18, dynamic batch, probe outputs), build an engine "
        "and verify it against PyTorch fp32.",
    )
    parser.add_argument("checkpoint", type=Path, help="checkpoint directory (model.safetensors + config.json)")
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    parser.add_argument("--engine", choices=("fp32", "fp16", "bf16", "int8"), default="fp32")
    parser.add_argument("--ops", choices=OPS_MODES, default="standard",
                        help="custom ops as standard ONNX ops or as one custom node each")
    parser.add_argument("--backend", choices=BACKEND_CHOICES, default="auto",
                        help="auto: TensorRT when installed with a GPU, else ONNX Runtime")
    parser.add_argument("--batch", type=parse_batch_range, default=(1, 4, 8), metavar="MIN:OPT:MAX",
                        help="TensorRT optimisation profile over the batch (default 1:4:8)")
    parser.add_argument("--precision-plan", metavar="PLAN_JSON|none",
                        help="JSON plan of the nodes kept in fp32 (brr-calibrate writes one); default for fp16/bf16: "
                        "brr's plan of the architecture's known fp32 islands (Mamba-2 RMS norms, the edge stream's "
                        "cosine similarity); 'none' keeps nothing in fp32")
    parser.add_argument("--calibration-data", type=Path, metavar="EDF_OR_DIR",
                        help="EDF/BDF file or directory for int8 calibration (default: synthetic windows)")
    parser.add_argument("--no-verify", action="store_true", help="skip the comparison with PyTorch fp32")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return_freed_memory()
    args = build_parser().parse_args(argv)
    request = ExportRequest(
        checkpoint=args.checkpoint, out=args.out, engine=args.engine, ops=args.ops, backend=args.backend,
        batch=args.batch, precision_plan=args.precision_plan, calibration_data=args.calibration_data,
    )
    try:
        result = export_artifacts(request)
    except TensorRTUnavailable as exc:
        print(f"brr-export: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    except (CheckpointError, PrecisionPlanError, EngineBuildError, FileNotFoundError) as exc:
        print(f"brr-export: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE if isinstance(exc, EngineBuildError) else 1
    if args.no_verify:
        return 0
    verification = verify_engine(args.checkpoint, result.engine_dir, result.precision,
                                 args.out / "verification" / result.engine_dir.name,
                                 load_checkpoint(args.checkpoint).config.window_samples,
                                 progress=lambda line: print(f"brr-export: verification: {line}", file=sys.stderr,
                                                             flush=True))
    print(f"verification {verification.summary()}")
    if not verification.passed:
        print(f"brr-export: engine diverges from PyTorch fp32; report kept in {verification.report_dir}",
              file=sys.stderr)
        return EXIT_DIVERGED
    return 0


if __name__ == "__main__":
    sys.exit(main())
