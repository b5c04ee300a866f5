"""``brr-export``: export a checkpoint to ONNX and build one engine (see :mod:`brr.export.run`)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from brr.backends import BACKEND_CHOICES
from brr.backends.trt.loader import parse_batch_range
from brr.cli.common import command_parser, deprecated_alias, run_main
from brr.diff.composed import verify_split
from brr.diff.verify import verify_engine
from brr.errors import EXIT_FAILED
from brr.export.precision_plan import shipped_plan_names
from brr.export.run import CALIBRATION_WINDOWS, EngineNotBuilt, ExportRequest, export_artifacts
from brr.model import load_checkpoint
from brr.ops.registry import OPS_MODES


def build_parser() -> argparse.ArgumentParser:
    parser = command_parser(
        "brr-export",
        "Export a checkpoint to fp32 ONNX (opset 18, dynamic batch, probe outputs), build an engine "
        "and verify it against PyTorch fp32.",
    )
    parser.add_argument("checkpoint", type=Path, help="checkpoint directory (model.safetensors + config.json)")
    parser.add_argument("-o", "--out", type=Path, required=True, help="output directory")
    parser.add_argument("--precision", "--engine", dest="engine", choices=("fp32", "fp16", "bf16", "int8"),
                        default="fp32", help="the engine's precision")
    parser.add_argument("--ops", choices=OPS_MODES, default="standard",
                        help="custom ops as standard ONNX ops or as one custom node each")
    parser.add_argument("--backend", choices=BACKEND_CHOICES, default="auto",
                        help="auto: TensorRT when installed with a GPU, else ONNX Runtime")
    batch = parser.add_argument("--trt-batch-range", dest="batch", type=parse_batch_range, default="1:4:8",
                                metavar="MIN:OPT:MAX", help="TensorRT optimisation profile over the batch")
    deprecated_alias(parser, "--batch", batch)
    parser.add_argument("--precision-plan", metavar="PLAN_JSON|NAME|none",
                        help="JSON plan of the nodes kept in fp32 (brr-calibrate writes one; for int8 also which "
                        "stages are quantized and what the others run in), or one of brr's plans by "
                        f"name ({', '.join(shipped_plan_names())}); default for fp16/bf16: "
                        "brr's plan of the architecture's known fp32 islands (Mamba-2 RMS norms, the edge stream's "
                        "cosine similarity); 'none' keeps nothing in fp32")
    data = parser.add_argument("--data", dest="calibration_data", type=Path, metavar="EDF_OR_DIR",
                               help="EDF/BDF file or directory for int8 calibration (default: synthetic windows)")
    deprecated_alias(parser, "--calibration-data", data)
    parser.add_argument("--calibration-windows", type=int, default=CALIBRATION_WINDOWS, metavar="N",
                        help="how many windows of --data int8 calibrates its activation ranges on")
    parser.add_argument("--split", action="store_true",
                        help="also write the detector's front and rest as two graphs, fp32 in the fp32 ONNX folder "
                        "and built as the engine beside the engine (ONNX Runtime, OpenVINO), each pair verified "
                        "composed: what brr-infer --window-mode overlap serves")
    parser.add_argument("--no-verify", action="store_true", help="skip the comparison with PyTorch fp32")
    return parser


def run(args: argparse.Namespace) -> int:
    request = ExportRequest(
        checkpoint=args.checkpoint, out=args.out, engine=args.engine, ops=args.ops, backend=args.backend,
        batch=args.batch, precision_plan=args.precision_plan, calibration_data=args.calibration_data,
        calibration_windows=args.calibration_windows, split=args.split,
    )
    try:
        result = export_artifacts(request)
    except EngineNotBuilt as unbuilt:  # the folder is written; say how to build its engine, then exit 2
        print("\n".join(unbuilt.commands))
        raise
    if result.commands:
        print("\n".join(result.commands))
    if args.no_verify:
        return 0
    window = load_checkpoint(args.checkpoint).config.window_samples
    verification = verify_engine(args.checkpoint, result.engine_dir, result.precision,
                                 args.out / "verification" / result.engine_dir.name, window)
    print(f"verification {verification.summary()}")
    verifications = [verification]
    if args.split:
        for directory in dict.fromkeys((result.reference_dir, result.engine_dir)):
            split = verify_split(args.checkpoint, directory,
                                 args.out / "verification" / f"{directory.name}-front+rest", window)
            print(f"verification of the front and rest of {directory.name} {split.summary()}")
            verifications.append(split)
    if not all(v.passed for v in verifications):
        print("brr-export: " + ", ".join(str(v.report.engines[0].name) for v in verifications if not v.passed)
              + f" diverges from PyTorch fp32; report kept in {args.out / 'verification'}", file=sys.stderr)
        return EXIT_FAILED
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_main("brr-export", build_parser(), run, argv, outputs=lambda args: [("--out", args.out)])


if __name__ == "__main__":
    sys.exit(main())
