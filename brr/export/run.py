"""What ``brr-export`` builds: the fp32 reference ONNX, then the requested engine, with manifests.

The folders are ``brr.artifact.files``'s: ``onnx-<ops>/`` (the reference), then
``<backend>-<precision>-<ops>/`` unless the engine asked for is the reference itself (ONNX Runtime fp32).
A backend asked for by name whose dependency is missing here but that ``builds_offline`` (TensorRT)
still gets its folder, with all its build needs and a manifest saying the engine is not built; then
``EngineNotBuilt`` carries the commands that build it elsewhere. ``split`` also writes the detector's front
and rest as two fp32 graphs (``brr.model.front``) into the reference folder, for overlap inference, and builds
the engine of each beside the engine of the whole detector (``build_split``).
"""

from __future__ import annotations

import json
import logging
import shlex
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from brr.artifact.files import ONNX_FILE, REFERENCE_BACKEND, STAGES_FILE, engine_folder, reference_folder
from brr.artifact.manifest import SplitGraphs, write_manifest
from brr.backends import BACKENDS, Backend, resolve_backend
from brr.backends.base import Int8Calibration
from brr.data import iter_windows, read_recording, recording_files
from brr.data.preprocess import TARGET_RATE
from brr.errors import DependencyUnavailable
from brr.export.onnx_export import export_onnx, export_split_onnx
from brr.export.precision_plan import PrecisionPlan, PrecisionPlanError, default_plan, load_plan
from brr.model import load_checkpoint
from brr.model.checkpoint import WEIGHTS_FILE, file_sha256, read_checkpoint_meta
from brr.model.contract import GraphPart
from brr.model.front import FrontGeometry
from brr.onnx.strong_typing import require_strongly_typed_files

log = logging.getLogger(__name__)

CALIBRATION_WINDOWS = 8
NO_PLAN = "none"  # --precision-plan none: no fp32 islands at all


@dataclass(frozen=True)
class ExportRequest:
    checkpoint: Path
    out: Path
    engine: str = "fp32"
    ops: str = "standard"
    backend: str = "auto"
    batch: tuple[int, int, int] = (1, 4, 8)
    precision_plan: Path | str | None = None  # None: the default plan of fp16/bf16; "none": no plan
    calibration_data: Path | None = None
    calibration_windows: int = CALIBRATION_WINDOWS
    split: bool = False  # also the front and rest graphs, in the reference folder


@dataclass
class ExportResult:
    reference_dir: Path
    engine_dir: Path
    backend: str
    precision: str
    seconds: dict[str, float] = field(default_factory=dict)
    commands: list[str] = field(default_factory=list)  # what builds or runs the engine outside brr


class EngineNotBuilt(DependencyUnavailable):
    """The engine's dependency is missing here; its folder holds what its build needs, and ``commands`` build it."""

    def __init__(self, message: str, engine_dir: Path, commands: list[str]):
        super().__init__(message)
        self.engine_dir, self.commands = engine_dir, commands


def export_command(request: ExportRequest, backend: str) -> str:
    """The brr-export line that makes this export again (elsewhere: where the backend's dependency is)."""
    args = ["brr-export", str(request.checkpoint), "--out", str(request.out), "--precision", request.engine,
            "--ops", request.ops, "--backend", backend, "--trt-batch-range", ":".join(map(str, request.batch))]
    for flag, value in (("--precision-plan", request.precision_plan), ("--data", request.calibration_data),
                        ("--calibration-windows", request.calibration_windows if request.engine == "int8" else None)):
        if value is not None:
            args += [flag, str(value)]
    if request.split:
        args.append("--split")
    return shlex.join(args)


def calibration_windows(source: Path | None, n_samples: int, count: int = CALIBRATION_WINDOWS) -> Iterator[np.ndarray]:
    """(1, 19, n_samples) float32 windows from EDF/BDF files (a file or a directory), else synthetic ones."""
    if source is None:
        warnings.warn("no --data: calibrating int8 on synthetic noise windows, "
                      "which sets activation ranges unlike real EEG", stacklevel=2)
        rng = np.random.default_rng(0)
        for _ in range(count):
            yield rng.standard_normal((1, 19, n_samples)).astype(np.float32)
        return
    files = recording_files(source) if source.is_dir() else [source]
    if not files:
        raise FileNotFoundError(f"{source}: no .edf/.bdf recordings for calibration")
    given, window_s = 0, n_samples / TARGET_RATE
    for path in files:
        for window in iter_windows(read_recording(path), window_s=window_s, stride_s=window_s):
            yield window.signals[None]
            given += 1
            if given >= count:
                return


def engine_plan(requested: Path | str | None, precision: str) -> PrecisionPlan:
    """The plan an engine is built with: the one asked for, none (``"none"``), or for fp16/bf16 the
    exporter's default fp32 islands."""
    if requested is not None and str(requested) != NO_PLAN:
        plan = load_plan(requested)
        meant_for = plan.metadata.get("precisions")
        if meant_for and precision not in meant_for:
            raise PrecisionPlanError(f"the plan {plan.name} is for {', '.join(meant_for)} engines, not {precision}")
        if plan.shapes_int8 and precision != "int8":
            raise PrecisionPlanError(f"the plan {plan.name} says what an int8 engine quantizes (int8_stages, "
                                     f"unquantized_precision): it is for int8 engines, not {precision}")
        return plan
    if requested is None and precision in ("fp16", "bf16"):
        return default_plan(precision)
    return PrecisionPlan()


def build_split(backend: Backend, plan: PrecisionPlan, reference_dir: Path, ops: str, engine_dir: Path,
                precision: str, geometry: FrontGeometry, calibration: Int8Calibration | None = None) -> SplitGraphs:
    """The engine of each part of the detector (front, rest) in ``engine_dir``, built from the fp32 graphs of
    ``reference_dir``, the plan resolved on the parts' own nodes (their names are not the whole graph's)."""
    graphs = {part: reference_dir / part.file for part in GraphPart}
    pinned = (plan.resolve_parts(reference_dir / ONNX_FILE, list(graphs.values()))
              if backend.applies_precision_plan else {})
    built = {part: backend.build_part(graphs[part], part, ops, engine_dir, precision, pinned.get(graphs[part], []),
                                      calibration)
             for part in GraphPart}
    return SplitGraphs(geometry, files={part: (b.model_file, *b.companion_files) for part, b in built.items()},
                       pinned_nodes={part: b.pinned_nodes for part, b in built.items()},
                       settings={part: b.settings for part, b in built.items()})


def export_artifacts(request: ExportRequest) -> ExportResult:
    checkpoint = Path(request.checkpoint)
    model = load_checkpoint(checkpoint)
    meta = read_checkpoint_meta(checkpoint)
    config = model.config
    source = {"checkpoint": str(checkpoint.resolve()), "weights_sha256": file_sha256(checkpoint / WEIGHTS_FILE),
              "recorded_weights_sha256": meta.get("weights_sha256"),
              # Chosen on validation data by brr-train; brr-infer applies it unless told otherwise.
              "postprocess": meta.get("training", {}).get("postprocess")}
    try:
        backend, missing = resolve_backend(request.backend), None
    except DependencyUnavailable as error:
        backend, missing = BACKENDS.get(request.backend), error
        if backend is None or not backend.builds_offline:
            raise
    seconds = {}

    start = time.perf_counter()
    reference = export_onnx(model, reference_folder(request.out, request.ops), request.ops)
    seconds["onnx_export"] = time.perf_counter() - start
    if request.split:
        start = time.perf_counter()
        export_split_onnx(model, reference.directory, request.ops)
        seconds["split_export"] = time.perf_counter() - start
    common = {"source": source, "config": config, "ops": request.ops, "opset": reference.opset}
    geometry = FrontGeometry.of(config)
    write_manifest(reference.directory, backend=REFERENCE_BACKEND, precision="fp32", model_file=ONNX_FILE,
                   pinned_nodes=[], split=SplitGraphs(geometry) if request.split else None, **common)
    log.info(f"fp32 ONNX ({request.ops} ops): {reference.model} in {seconds['onnx_export']:.1f} s")

    engine_dir, commands = reference.directory, []
    if not (backend.name == REFERENCE_BACKEND and request.engine == "fp32"):
        stages = json.loads((reference.directory / STAGES_FILE).read_text())
        plan = engine_plan(request.precision_plan, request.engine)
        pinned = plan.resolve(reference.model, stages) if backend.applies_precision_plan else []
        engine_dir = engine_folder(request.out, backend.name, request.engine, request.ops)
        if request.split:
            backend.check_split(request.engine)
        calibration = (Int8Calibration(list(calibration_windows(request.calibration_data, config.window_samples,
                                                                request.calibration_windows)), plan.int8_scope)
                       if request.engine == "int8" else None)
        start = time.perf_counter()
        arguments = (reference.model, request.ops, engine_dir, request.engine, pinned, request.batch, config, calibration)
        built = backend.build(*arguments) if missing is None else backend.prepare(*arguments, missing=str(missing))
        seconds["engine_build"] = time.perf_counter() - start
        split = None
        if request.split:
            start = time.perf_counter()
            # The layers the whole int8 engine gave back to fp32 stay fp32 in its parts.
            restored = tuple(built.settings.get("fp32_restored_nodes", ()))
            split = build_split(backend, replace(plan, fp32_nodes=plan.fp32_nodes + restored), reference.directory,
                                request.ops, engine_dir, request.engine, geometry, calibration)
            seconds["split_build"] = time.perf_counter() - start
        # The typed graph an engine is built from must build as typed (TensorRT's strong typing).
        typed_graphs = require_strongly_typed_files(
            engine_dir, built.pinned_nodes, skipped=[name for files in (split.files.values() if split else [])
                                                     for name in files])
        write_manifest(engine_dir, backend=backend.name, precision=request.engine, model_file=built.model_file,
                       pinned_nodes=built.pinned_nodes, batch=request.batch if backend.batch_profile else None,
                       settings=built.settings | typed_graphs, fp32_reference=reference.directory,
                       precision_plan=plan.describe(pinned) if plan.metadata or plan.source != "(none)" else None,
                       unbuilt=built.unbuilt, split=split, **common)
        commands = backend.commands(built.settings, export_command(request, backend.name))
        if built.unbuilt is not None:
            raise EngineNotBuilt(f"{missing}; {engine_dir} holds what its build needs", engine_dir, commands)
        log.info(f"{backend.name} {request.engine} engine: {engine_dir} in {seconds['engine_build']:.1f} s")

    return ExportResult(reference.directory, engine_dir, backend.name, request.engine, seconds=seconds,
                        commands=commands)
