"""``calibrate``: a precision plan (fp16/bf16) or an INT8 model, proved on windows, with an honest report.

Outputs in ``out``:

    precision_plan.json        fp16/bf16: the plan ``brr-export --precision-plan`` loads (PrecisionPlan)
    int8/model.onnx            int8: ONNX Runtime QDQ model calibrated on the EDF windows
    diff/                      the diff of the final engine against fp32 (report.json/.md/.html)
    calibration_report.json    final error per stage, pinned nodes and FLOP share, ORT CPU latency
    calibration_report.md
    onnx-standard/             the fp32 export, when the source is a checkpoint
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError
from polygraphy.backend.base import BaseRunner

from brr.atomic import atomic_write_text
from brr.backends.trt.loader import CALIBRATION_CACHE_FILE, TensorRTUnavailable
from brr.calibration.flops import flop_share, node_flops
from brr.calibration.int8 import build_tensorrt_int8, quantize_onnxruntime
from brr.calibration.search import REDUCED_PRECISIONS, PlanSearch
from brr.calibration.speed import compare_latency
from brr.calibration.windows import EdfBatches
from brr.diff import AdversarialWindows, ChainedWindows, EdfWindows, run_diff
from brr.backends.onnxrt.runner import onnxruntime_runner
from brr.diff.engines import onnxruntime_engine
from brr.diff.inputs import WindowLoader
from brr.errors import UsageError
from brr.onnx.precision import low_precision_model
from brr.artifact.files import ONNX_FILE as MODEL_FILE
from brr.export.onnx_export import export_onnx
from brr.export.precision_plan import PrecisionPlan
from brr.model import DetectorConfig, V3Detector, load_checkpoint, resolve_config
from brr.model.checkpoint import CONFIG_FILE, WEIGHTS_FILE, file_sha256

PRECISIONS = (*REDUCED_PRECISIONS, "int8")
PLAN_FILE = "precision_plan.json"
REPORT_JSON = "calibration_report.json"
REPORT_MD = "calibration_report.md"
PLAN_FORMAT = "brr-precision-plan/1"
MANIFEST_FILE = "manifest.json"


class CalibrationError(UsageError):
    """A source, data set or setting calibration cannot use; the message names the file and the problem."""


@dataclass
class Source:
    """The fp32 graphs a calibration works on, and what is known of the model behind them."""

    onnx: Path  # model.onnx: the graph brr-export resolves a plan against (probes among its outputs)
    config: DetectorConfig | None
    model: V3Detector | None  # the PyTorch fp32 reference, from a checkpoint


@dataclass
class CalibrationResult:
    precision: str
    out: Path
    plan_path: Path | None
    plan: PrecisionPlan | None
    model_path: Path | None  # the int8 ONNX model
    report: dict
    report_paths: dict[str, Path] = field(default_factory=dict)

    @property
    def verdict(self) -> str:
        return self.report["final"]["verdict"]

    @property
    def passed(self) -> bool:
        return self.verdict in ("clean", "basis_ambiguous")


class ListedWindows(WindowLoader):
    """Windows already read (the search holds them anyway), labelled as they were."""

    def __init__(self, windows: list[tuple[str, dict]]):
        self.windows = windows

    def labelled(self):
        return iter(self.windows)


def resolve_source(source: str | Path, out: Path, say: Callable[[str], None]) -> Source:
    """A checkpoint folder (exported here), an export folder holding model.onnx, or an .onnx file."""
    path = Path(source)
    if path.is_dir() and (path / CONFIG_FILE).is_file() and (path / WEIGHTS_FILE).is_file():
        model = load_checkpoint(path)
        say(f"exporting {path} to ONNX (standard ops)")
        export = export_onnx(model, out / "onnx-standard", "standard")
        return Source(export.model, model.config, model)
    if path.is_dir():
        if not (path / MODEL_FILE).is_file():
            raise CalibrationError(f"{path}: neither a checkpoint ({CONFIG_FILE} + {WEIGHTS_FILE}) nor an export "
                                   f"folder ({MODEL_FILE})")
        path = path / MODEL_FILE
    if not path.is_file():
        raise CalibrationError(f"{path}: no such checkpoint folder or ONNX file")
    try:
        onnx.load(str(path), load_external_data=False)
    except (OSError, DecodeError) as exc:
        raise CalibrationError(f"{path}: not a readable ONNX model ({exc})") from None
    return Source(path, resolve_config_of(path), None)


def resolve_config_of(model_path: Path) -> DetectorConfig | None:
    """The detector config in the ``manifest.json`` beside an exported ONNX file, if there is one."""
    manifest = Path(model_path).parent / MANIFEST_FILE
    if not manifest.is_file():
        return None
    try:
        return resolve_config(json.loads(manifest.read_text())["config"])
    except (KeyError, ValueError) as exc:
        raise CalibrationError(f"{manifest}: no usable detector config ({exc})") from None


def window_samples(model: onnx.ModelProto) -> int:
    dims = model.graph.input[0].type.tensor_type.shape.dim
    if len(dims) != 3 or not dims[2].HasField("dim_value"):
        raise CalibrationError(f"model input {model.graph.input[0].name!r} is not (batch, 19, samples) with fixed samples")
    return dims[2].dim_value


def calibrate(source: str | Path, data: list[str | Path] | WindowLoader, precision: str = "fp16",
              out: str | Path = "calibration", atol: float = 1e-2, rtol: float = 1e-2, adversarial: bool = True,
              max_windows: int = 8, max_pins: int = 64, speed_repeats: int = 3,
              say: Callable[[str], None] = print) -> CalibrationResult:
    """Calibrate ``source`` for ``precision`` on ``data`` (EDF/BDF files or folders, or a window loader).

    fp16/bf16: search the plan (``brr.calibration.search``), write ``precision_plan.json``, diff the
    planned engine. int8: quantise for ONNX Runtime (and TensorRT when available), diff it.
    """
    if precision not in PRECISIONS:
        raise CalibrationError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    src = resolve_source(source, out, say)
    fp32_probed = onnx.load(str(src.onnx))
    samples = window_samples(fp32_probed)
    loaders: list[WindowLoader] = [data if isinstance(data, WindowLoader) else
                                   EdfWindows(list(data), samples, stride_s=samples / 256, max_windows=max_windows)]
    if adversarial:
        loaders.append(AdversarialWindows(samples))
    windows = list(ChainedWindows(loaders).labelled())
    say(f"{len(windows)} calibration windows ({', '.join(label for label, _ in windows[:4])}"
        f"{' ...' if len(windows) > 4 else ''})")
    reference: V3Detector | BaseRunner = src.model or onnxruntime_runner(fp32_probed, "fp32-onnx")
    served_fp32 = onnx.load(str(src.onnx))
    feeds = [feed for _, feed in windows]
    report: dict = {"precision": precision, "source": _source_doc(src), "tolerance": {"atol": atol, "rtol": rtol},
                    "windows": [label for label, _ in windows]}

    if precision in REDUCED_PRECISIONS:
        search = PlanSearch(fp32_probed, precision, windows, atol, rtol, src.config,
                            pinnable={n.name for n in served_fp32.graph.node}, max_pins=max_pins,
                            say=say)
        say(f"searching the {precision} plan ({len(search.pinnable)} pinnable nodes)")
        pins, final = search.run()
        plan_path = out / PLAN_FILE
        plan_doc = plan_document(src, served_fp32, precision, pins, final, search, atol, rtol)
        atomic_write_text(plan_path, json.dumps(_json_safe(plan_doc), indent=1))
        plan = PrecisionPlan.load(plan_path)
        plan.resolve(src.onnx, {})  # the plan must name nodes of the served model only
        engine = search.engine(pins)
        planned_served = low_precision_model(served_fp32, pins, precision)
        report |= {"plan": str(plan_path), "pinned": plan_doc["metadata"]["pinned"],
                   "pinned_count": len(pins), "flops": plan_doc["metadata"]["flops"],
                   "search": {"engine": engine.name, "evaluations": search.evaluations}}
        model_path = None
    else:
        batches = EdfBatches(list(data), batch_size=1, window_samples=samples, max_windows=max_windows) \
            if not isinstance(data, WindowLoader) else None
        if batches is None:
            raise CalibrationError("int8 calibration needs EDF/BDF recordings (--data), not a window loader")
        say(f"int8: ONNX Runtime static QDQ on {len(batches.files)} recording(s), up to {max_windows} windows")
        model_path = quantize_onnxruntime(src.onnx, batches, out / "int8")
        engine = onnxruntime_engine(model_path, fp32_probed, name="onnxruntime-int8", precision="int8")
        planned_served = onnx.load(str(model_path))
        plan, plan_path = None, None
        report |= {"int8_model": str(model_path), "tensorrt": _tensorrt_int8(src.onnx, list(data), samples,
                                                                              max_windows, out / "tensorrt-int8")}

    say(f"diff of {engine.name} against fp32 on {len(windows)} windows")
    diff = run_diff(reference, [engine], ListedWindows(windows), atol, rtol, report_dir=out / "diff",
                    fail_on="never")
    result_engine = diff.engines[0]
    report["final"] = {"engine": engine.name, "verdict": result_engine.verdict,
                       "nonfinite_outputs": sum(s.precision_nonfinite for s in result_engine.stages.values()),
                       "stages": {name: _stage_doc(stats) for name, stats in result_engine.stages.items()},
                       "diff_report": str(out / "diff" / "report.json")}
    say("timing ONNX Runtime CPU: fp32 vs the planned model")
    report["speed_onnxruntime_cpu"] = compare_latency({"fp32": served_fp32, precision: planned_served}, feeds,
                                                      speed_repeats)
    paths = write_report(_json_safe(report), out)
    return CalibrationResult(precision, out, plan_path, plan, model_path, report, paths)


def plan_document(src: Source, served: onnx.ModelProto, precision: str, pins: dict, final, search: PlanSearch,
                  atol: float, rtol: float) -> dict:
    """The ``PrecisionPlan`` file: ``fp32_nodes`` plus the evidence under ``metadata``."""
    flops = node_flops(served)
    return {
        "comment": f"written by brr-calibrate: nodes of {src.onnx.name} that {precision} engines keep in fp32",
        "fp32_nodes": sorted(pins),
        "metadata": {
            "format": PLAN_FORMAT,
            "precision": precision,
            "source_onnx": {"path": str(src.onnx), "sha256": file_sha256(src.onnx),
                            "probed_path": str(src.onnx), "probed_sha256": file_sha256(src.onnx)},
            "tolerance": {"atol": atol, "rtol": rtol},
            "windows": list(search.windows),
            "pinned_count": len(pins),
            "pinned": [pin.to_dict() | {"flops": flops.get(pin.node)} for pin in pins.values()],
            "flops": flop_share(served, set(pins)),
            "verdict": "clean" if final.accepted else final.failure.verdict,
            "error_per_stage": {name: _stage_doc(stats) for name, stats in final.stages.items()},
            "evaluated_by": final.engine,
        },
    }


def _tensorrt_int8(model: Path, data: list, samples: int, max_windows: int, directory: Path) -> dict:
    try:
        engine = build_tensorrt_int8(model, EdfBatches(data, 1, samples, max_windows=max_windows), directory)
    except TensorRTUnavailable as exc:
        return {"built": False, "reason": str(exc)}
    return {"built": True, "engine": str(engine), "cache": str(directory / CALIBRATION_CACHE_FILE)}


def _source_doc(src: Source) -> dict:
    return {"served_onnx": str(src.onnx), "served_sha256": file_sha256(src.onnx), "probed_onnx": str(src.onnx),
            "config": None if src.config is None else src.config.name,
            "reference": "pytorch fp32 checkpoint" if src.model is not None else "onnxruntime fp32 of the source"}


def _stage_doc(stats) -> dict:
    return {"max_abs_err": stats.max_abs_err, "rel_err": stats.rel_err, "precision_nonfinite": stats.precision_nonfinite,
            "passed": stats.passed}


def _json_safe(value):
    """Non-finite floats as strings: the files stay strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def write_report(report: dict, out: Path) -> dict[str, Path]:
    paths = {"json": out / REPORT_JSON, "markdown": out / REPORT_MD}
    atomic_write_text(paths["json"], json.dumps(report, indent=1))
    atomic_write_text(paths["markdown"], markdown(report))
    return paths


def markdown(report: dict) -> str:
    final = report["final"]
    lines = [f"# brr-calibrate: {report['precision']}", "",
             f"- source: `{report['source']['served_onnx']}` (sha256 {report['source']['served_sha256'][:12]})",
             (f"- windows: {len(report['windows'])}; tolerance atol {report['tolerance']['atol']:g}, "
             f"rtol {report['tolerance']['rtol']:g}"),
             (f"- final engine `{final['engine']}`: **{final['verdict']}**, non-finite outputs "
             f"{final['nonfinite_outputs']}")]
    if "pinned_count" in report:
        flops = report["flops"]
        lines.append(f"- pinned fp32 nodes: **{report['pinned_count']}**, {100 * flops['share']:.2f} % of "
                     f"{flops['total_flops']:.3g} MatMul/Gemm/Conv FLOPs per window")
    if "tensorrt" in report:
        trt = report["tensorrt"]
        lines.append(f"- TensorRT int8: {'built, cache ' + trt['cache'] if trt['built'] else trt['reason']}")
    lines += ["", "| stage | max abs err | rel err | non-finite | within tol |", "|---|---|---|---|---|"]
    for name, s in final["stages"].items():
        lines.append(f"| {name} | {_fmt(s['max_abs_err'])} | {_fmt(s['rel_err'])} | {s['precision_nonfinite']} | "
                     f"{'yes' if s['passed'] else 'no'} |")
    if report.get("pinned"):
        lines += ["", "| pinned node | op | stage | reason | evidence |", "|---|---|---|---|---|"]
        for pin in report["pinned"]:
            why = pin["evidence"].get("explanation") or f"rel err {_fmt(pin['evidence'].get('rel_err'))}"
            lines.append(f"| {pin['node']} | {pin['op_type']} | {pin['stage']} | {pin['reason']} | {why} |")
    lines += ["", "| ORT CPU model | median s/window | vs fp32 |", "|---|---|---|"]
    for name, t in report["speed_onnxruntime_cpu"].items():
        lines.append(f"| {name} | {t['median_s']:.4f} | {t['relative_to_fp32']:.2f}x |")
    return "\n".join(lines) + "\n"


def _fmt(value) -> str:
    return f"{value:.3g}" if isinstance(value, (int, float)) else str(value)
