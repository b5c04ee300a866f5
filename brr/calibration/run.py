"""``calibrate``: a precision plan (fp16/bf16) or an INT8 model, proved on windows, with an honest report.

Outputs in ``out``:

    precision_plan.json        fp16/bf16: the plan ``brr-export --precision-plan`` loads (PrecisionPlan): the
                               best verified plan, its evidence per pin, the windows it is not accepted on
    int8/model.onnx            int8: ONNX Runtime QDQ model calibrated on the EDF windows
    diff/                      int8: the diff of the quantised engine against fp32 (report.json/.md/.html)
    calibration_report.json    final error per stage, pinned nodes and FLOP share, the default plan compared,
                               ORT CPU latency, the run's time and peak RSS
    calibration_report.md
    onnx-standard/             the fp32 export, when the source is a checkpoint

fp16/bf16 plans are judged by the search itself on the engine ``brr-export`` serves on ONNX Runtime,
against the fp32 ONNX graph (every probe, every tensor's finiteness, every window); ``brr-export
--precision-plan`` then verifies the engine it builds against PyTorch.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError
from polygraphy.backend.base import BaseRunner

from brr.artifact.files import ONNX_FILE as MODEL_FILE
from brr.atomic import atomic_write_text
from brr.backends.onnxrt.runner import onnxruntime_runner
from brr.backends.trt.loader import TensorRTUnavailable
from brr.calibration.flops import flop_share, node_flops
from brr.calibration.int8 import build_tensorrt_int8, quantize_onnxruntime
from brr.calibration.ranges import FOUND_BY
from brr.calibration.search import REDUCED_PRECISIONS, PlanSearch, SearchError
from brr.calibration.speed import compare_latency
from brr.calibration.windows import EdfBatches
from brr.data.preprocess import TARGET_RATE
from brr.diff import TOLERANCES, ChainedWindows, EdfWindows, SyntheticWindows, run_diff
from brr.diff.engines import onnxruntime_engine
from brr.diff.inputs import VERIFICATION_SYNTHETIC_WINDOWS, WindowLoader, fixed_windows, verification_windows
from brr.diff.verdict import Verdict
from brr.errors import UsageError
from brr.export.onnx_export import export_onnx
from brr.export.precision_plan import PrecisionPlan, PrecisionPlanError, default_plan
from brr.model import DetectorConfig, V3Detector, load_checkpoint, resolve_config
from brr.model.checkpoint import CONFIG_FILE, WEIGHTS_FILE, file_sha256
from brr.montage import N_CHANNELS
from brr.onnx.stages import node_stages
from brr.onnx.strong_typing import require_strongly_typed
from brr.resources import peak_rss_mb

log = logging.getLogger(__name__)

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
    def verdict(self) -> Verdict:
        return Verdict(self.report["final"]["verdict"])

    @property
    def passed(self) -> bool:
        return self.verdict.accepted


def resolve_source(source: str | Path, out: Path) -> Source:
    """A checkpoint folder (exported here), an export folder holding model.onnx, or an .onnx file."""
    path = Path(source)
    if path.is_dir() and (path / CONFIG_FILE).is_file() and (path / WEIGHTS_FILE).is_file():
        model = load_checkpoint(path)
        log.info(f"exporting {path} to ONNX (standard ops)")
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


def calibration_windows(data: list[str | Path] | WindowLoader | None, synthetic: int | None, samples: int,
                        max_windows: int, adversarial: bool) -> WindowLoader:
    """EDF/BDF windows (``data``), or ``synthetic`` seeded windows; then, if ``adversarial``, every window
    export verifies on (``verification_windows``: the first seeded synthetic ones, the seizure and the
    adversarial suite), so that a plan accepted here passes export's verification."""
    if (data is None) == (synthetic is None):
        raise CalibrationError("calibration needs windows: EDF/BDF recordings (--data) or a number of synthetic "
                               "windows (--synthetic), one of the two")
    if synthetic is not None:
        count = max(synthetic, VERIFICATION_SYNTHETIC_WINDOWS) if adversarial else synthetic
        loader: WindowLoader = SyntheticWindows(count, samples)
        return ChainedWindows([loader, fixed_windows(samples)]) if adversarial else loader
    if isinstance(data, WindowLoader):
        loader = data
    else:
        loader = EdfWindows(list(data), samples, stride_s=samples / TARGET_RATE, max_windows=max_windows)
    return ChainedWindows([loader, verification_windows(samples)]) if adversarial else loader


@dataclass(frozen=True)
class CalibrationSettings:
    """How a calibration runs (see ``calibrate``); ``atol``/``rtol`` None: the precision's (``tolerance``)."""

    precision: str = "fp16"
    atol: float | None = None
    rtol: float | None = None
    adversarial: bool = True  # the adversarial windows too
    max_windows: int = 8  # EDF windows read
    max_pins: int = 64  # the search gives up beyond this many fp32 nodes
    speed_repeats: int = 3
    budget_minutes: float | None = None  # the search's, from the start of the fp32 pass
    synthetic: int | None = None  # seeded synthetic windows instead of EDF data

    def __post_init__(self):
        if self.precision not in PRECISIONS:
            raise CalibrationError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.budget_minutes is not None and self.budget_minutes <= 0:
            raise CalibrationError(
                f"the budget must be a positive number of minutes, got {self.budget_minutes:g}")

    @property
    def tolerance(self) -> tuple[float, float]:
        """(atol, rtol): as given, else the precision's, the ones ``brr-export`` verifies with."""
        default_atol, default_rtol = TOLERANCES[self.precision]
        return ((default_atol if self.atol is None else self.atol),
                (default_rtol if self.rtol is None else self.rtol))


def calibrate(source: str | Path, data: list[str | Path] | WindowLoader | None = None, precision: str = "fp16",
              out: str | Path = "calibration", atol: float | None = None, rtol: float | None = None,
              adversarial: bool = True, max_windows: int = 8, max_pins: int = 64, speed_repeats: int = 3,
              budget_minutes: float | None = None, synthetic: int | None = None,) -> CalibrationResult:
    """Calibrate ``source`` for ``precision`` on ``data`` (EDF/BDF files or folders, or a window loader) or
    on ``synthetic`` seeded windows; ``atol``/``rtol`` default to the precision's (``brr.diff.TOLERANCES``),
    the ones ``brr-export`` verifies with. The settings as keywords (``CalibrationSettings``), for the
    command line; ``calibrate_with`` takes them as one object.
    """
    return calibrate_with(source, data, out, CalibrationSettings(
        precision, atol, rtol, adversarial, max_windows, max_pins, speed_repeats, budget_minutes, synthetic))


def calibrate_with(source: str | Path, data: list[str | Path] | WindowLoader | None, out: str | Path,
                   settings: CalibrationSettings) -> CalibrationResult:
    """fp16/bf16: search the plan (``brr.calibration.search``) within the budget, write
    ``precision_plan.json`` (the best verified plan, marked not accepted where it is not) and compare it
    with the exporter's default plan. int8: quantise for ONNX Runtime (and TensorRT when available), diff it.
    """
    started = time.monotonic()
    precision = settings.precision
    atol, rtol = settings.tolerance
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    src = resolve_source(source, out)
    fp32 = onnx.load(str(src.onnx))
    samples = window_samples(fp32)
    windows = calibration_windows(data, settings.synthetic, samples, settings.max_windows, settings.adversarial)
    report: dict = {"precision": precision, "source": _source_doc(src, precision),
                    "tolerance": {"atol": atol, "rtol": rtol}}
    if precision in REDUCED_PRECISIONS:
        plan, plan_path = _search_plan(src, fp32, windows, settings, report, out)
        model_path = None
    else:
        model_path = _calibrate_int8(src, fp32, data, samples, windows, settings, report, out)
        plan, plan_path = None, None
    report["cost"] = {"seconds": round(time.monotonic() - started, 1), "peak_rss_mb": round(peak_rss_mb())}
    paths = write_report(_json_safe(report), out)
    return CalibrationResult(precision, out, plan_path, plan, model_path, report, paths)


def _calibrate_int8(src: Source, fp32: onnx.ModelProto, data: list[str | Path] | WindowLoader | None, samples: int,
                    windows: WindowLoader, settings: CalibrationSettings, report: dict, out: Path) -> Path:
    """The INT8 model for ONNX Runtime (and TensorRT when available), its diff against fp32, and what the
    report says of them; returns the ONNX model's path."""
    precision, max_windows, speed_repeats = settings.precision, settings.max_windows, settings.speed_repeats
    atol, rtol = settings.tolerance
    if isinstance(data, WindowLoader) or data is None:
        raise CalibrationError("int8 calibration needs EDF/BDF recordings (--data), not generated windows")
    batches = EdfBatches(list(data), batch_size=1, window_samples=samples, max_windows=max_windows)
    log.info(f"int8: ONNX Runtime static QDQ on {len(batches.files)} recording(s), up to {max_windows} windows")
    model_path = quantize_onnxruntime(src.onnx, batches, out / "int8")
    report["strong_typing"] = require_strongly_typed(onnx.load(str(model_path)), (), str(model_path)).to_dict()
    engine = onnxruntime_engine(model_path, fp32, name="onnxruntime-int8", precision="int8")
    report |= {"int8_model": str(model_path),
               "tensorrt": _tensorrt_int8(model_path, (1, N_CHANNELS, samples), out / "tensorrt-int8")}
    reference: V3Detector | BaseRunner = src.model or onnxruntime_runner(fp32, "fp32-onnx")
    log.info(f"diff of {engine.name} against fp32")
    diff = run_diff(reference, [engine], windows, atol, rtol, report_dir=out / "diff", fail_on="never")
    result_engine = diff.engines[0]
    report["windows"] = diff.inputs
    report["final"] = {"engine": engine.name, "verdict": result_engine.verdict,
                       "accepted": result_engine.verdict.accepted,
                       "nonfinite_outputs": sum(s.precision_nonfinite for s in result_engine.stages.values()),
                       "stages": {name: _stage_doc(stats) for name, stats in result_engine.stages.items()},
                       "diff_report": str(out / "diff" / "report.json")}
    log.info("timing ONNX Runtime CPU: fp32 vs the int8 model (one window)")
    first_feed = next(iter(windows))
    report["speed_onnxruntime_cpu"] = compare_latency({"fp32": fp32, precision: onnx.load(str(model_path))},
                                                      [first_feed], speed_repeats)
    return model_path


def _search_plan(src: Source, fp32: onnx.ModelProto, windows: WindowLoader, settings: CalibrationSettings,
                 report: dict, out: Path) -> tuple[PrecisionPlan, Path]:
    """The fp16/bf16 plan search, its plan file, and what the report says of it."""
    precision, budget_minutes, speed_repeats = settings.precision, settings.budget_minutes, settings.speed_repeats
    atol, rtol = settings.tolerance
    budget_s = None if budget_minutes is None else 60 * budget_minutes
    with PlanSearch(fp32, precision, windows, atol, rtol, src.config, max_pins=settings.max_pins,
                    budget_s=budget_s) as search:
        log.info(f"{len(search.windows)} calibration windows; searching the {precision} plan "
                 f"({len(search.pinnable)} pinnable nodes)")
        error = None
        try:
            pins, final = search.run()
        except SearchError as exc:
            pins, final, error = search.best_pins(), search.best, str(exc)
            if final is None:
                raise
            log.info(f"search stopped: {error}")
        stopped = "error" if error else search.stopped
        plan_path = out / PLAN_FILE
        planned = search.reduced_model(pins)
        # A plan is written only where its typed graph builds as typed (TensorRT's strong typing).
        typing = require_strongly_typed(planned, pins, f"the {precision} graph of the calibrated plan")
        plan_doc = plan_document(src, fp32, precision, pins, final, search, atol, rtol, stopped, error)
        atomic_write_text(plan_path, json.dumps(_json_safe(plan_doc), indent=1))
        plan = PrecisionPlan.load(plan_path)
        plan.resolve(src.onnx, {})  # the plan must name nodes of the served model only
        report |= {"windows": search.windows, "plan": str(plan_path), "accepted": final.accepted,
                   "strong_typing": typing.to_dict(),
                   "stopped": stopped, "error": error, "not_accepted_on": final.not_accepted(),
                   "pinned": plan_doc["metadata"]["pinned"], "pinned_count": len(pins),
                   "flops": plan_doc["metadata"]["flops"],
                   "default_plan": plan_doc["metadata"]["default_plan"],
                   "search": {"engine": final.engine, "evaluations": search.evaluations,
                              "seconds": round(search.elapsed, 1), "sessions_created": search.sessions.created,
                              "budget_minutes": budget_minutes},
                   "final": {"engine": final.engine, "verdict": plan_doc["metadata"]["verdict"],
                             "accepted": final.accepted,
                             "evaluated_by": ("the served ONNX Runtime engine of the plan against the fp32 ONNX "
                                              "graph, every probe and every tensor's finiteness, on every window"),
                             "nonfinite_outputs": sum(s.precision_nonfinite for s in final.stages.values()),
                             "stages": {name: _stage_doc(stats) for name, stats in final.stages.items()}}}
        log.info(f"timing ONNX Runtime CPU: fp32 vs the planned {precision} model (one window)")
        report["speed_onnxruntime_cpu"] = compare_latency({"fp32": fp32, precision: planned},
                                                          [search.store.feed(search.windows[0])], speed_repeats)
    return plan, plan_path


def final_verdict(evaluation) -> Verdict:
    """Clean, basis-ambiguous (accepted, some eigenbasis only rotated), or the first failure's verdict."""
    if evaluation.failure is not None:
        return evaluation.failure.verdict
    return Verdict.BASIS_AMBIGUOUS if any(i.verdict is Verdict.BASIS_AMBIGUOUS for i in evaluation.inputs) \
        else Verdict.CLEAN


def compare_with_default_plan(precision: str, model_path: Path, model: onnx.ModelProto, pins: set[str]) -> dict:
    """How the calibrated plan differs from the exporter's default plan on this graph (nodes in one only)."""
    plan = default_plan(precision)
    doc = {"plan": plan.name, "version": plan.metadata.get("version")}
    try:
        default = set(plan.resolve(model_path, node_stages(model)))
    except PrecisionPlanError as exc:
        return doc | {"applies": False, "reason": str(exc)}
    return doc | {"applies": True, "default_count": len(default), "in_both": sorted(default & pins),
                  "only_in_default": sorted(default - pins), "only_in_calibrated": sorted(pins - default)}


def plan_document(src: Source, served: onnx.ModelProto, precision: str, pins: dict, final, search: PlanSearch,
                  atol: float, rtol: float, stopped: str | None = None, error: str | None = None) -> dict:
    """The ``PrecisionPlan`` file: ``fp32_nodes`` plus the evidence under ``metadata``."""
    flops = node_flops(served)
    accepted = final.accepted
    status = "accepted on every window" if accepted else (
        f"NOT ACCEPTED on {len(final.failures)} of {len(final.inputs)} windows "
        f"({', '.join(f['window'] for f in final.not_accepted())}): the best verified plan when the search "
        + ("ran out of budget" if stopped == "budget" else f"stopped ({error})"))
    return {
        "comment": f"written by brr-calibrate: nodes of {src.onnx.name} that {precision} engines keep in fp32; "
                   f"{status}",
        "fp32_nodes": sorted(pins),
        "metadata": {
            "format": PLAN_FORMAT,
            "precision": precision,
            "source_onnx": {"path": str(src.onnx), "sha256": file_sha256(src.onnx),
                            "probed_path": str(src.onnx), "probed_sha256": file_sha256(src.onnx)},
            "tolerance": {"atol": atol, "rtol": rtol},
            "windows": list(search.windows),
            "accepted": accepted,
            "not_accepted_on": final.not_accepted(),
            "stopped": stopped,
            "pinned_count": len(pins),
            "pinned_by_fp32_ranges": sum(p.engine == FOUND_BY for p in pins.values()),
            "pinned": [pin.to_dict() | {"flops": flops.get(pin.node)} for pin in pins.values()],
            "flops": flop_share(served, set(pins)),
            "default_plan": compare_with_default_plan(precision, src.onnx, served, set(pins)),
            "verdict": final_verdict(final),
            "error_per_stage": {name: _stage_doc(stats) for name, stats in final.stages.items()},
            "evaluated_by": final.engine,
        },
    }


def _tensorrt_int8(qdq_model: Path, shape: tuple[int, int, int], directory: Path) -> dict:
    try:
        engine = build_tensorrt_int8(qdq_model, shape, directory)
    except TensorRTUnavailable as exc:
        return {"built": False, "reason": str(exc)}
    return {"built": True, "engine": str(engine)}


def _source_doc(src: Source, precision: str) -> dict:
    reference = "pytorch fp32 checkpoint" if src.model is not None and precision == "int8" else \
        "onnxruntime fp32 of the source graph"
    return {"served_onnx": str(src.onnx), "served_sha256": file_sha256(src.onnx), "probed_onnx": str(src.onnx),
            "config": None if src.config is None else src.config.name, "reference": reference}


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
    lines = [f"# brr-calibrate: {report['precision']}", ""]
    if not final["accepted"]:
        failing = report.get("not_accepted_on") or []
        why = {"budget": "the budget ran out", "error": f"the search stopped: {report.get('error')}"}.get(
            report.get("stopped"), final["verdict"])
        lines += [f"**NOT ACCEPTED**: {why}. The plan written is the best verified one; it fails on "
                  + (", ".join(f"{f['window']} ({f['verdict']} at {f['stage']})" for f in failing)
                     or f"the windows ({final['verdict']})") + ".", ""]
    lines += [f"- source: `{report['source']['served_onnx']}` (sha256 {report['source']['served_sha256'][:12]})",
              (f"- windows: {len(report['windows'])}; tolerance atol {report['tolerance']['atol']:g}, "
               f"rtol {report['tolerance']['rtol']:g}"),
              (f"- final engine `{final['engine']}`: **{final['verdict']}**, non-finite outputs "
               f"{final['nonfinite_outputs']}")]
    if "pinned_count" in report:
        flops = report["flops"]
        by_ranges = sum(p["found_by"] == FOUND_BY for p in report["pinned"])
        lines.append(f"- pinned fp32 nodes: **{report['pinned_count']}** ({by_ranges} from the fp32 ranges alone), "
                     f"{100 * flops['share']:.2f} % of {flops['total_flops']:.3g} MatMul/Gemm/Conv FLOPs per window")
        search = report["search"]
        lines.append(f"- search: {search['evaluations']} evaluations in {search['seconds']:.0f} s"
                     + (f" (budget {search['budget_minutes']:g} min)" if search["budget_minutes"] else ""))
        default = report["default_plan"]
        if default["applies"]:
            lines.append(f"- against the default plan `{default['plan']}` (v{default['version']}, "
                         f"{default['default_count']} nodes): {len(default['in_both'])} in both; only in the default "
                         f"{_names(default['only_in_default'])}; only here {_names(default['only_in_calibrated'])}")
        else:
            lines.append(f"- the default plan `{default['plan']}` does not apply to this graph: {default['reason']}")
    if "tensorrt" in report:
        trt = report["tensorrt"]
        lines.append(f"- TensorRT int8 (the Q/DQ graph, strongly typed): "
                     f"{'built, ' + trt['engine'] if trt['built'] else trt['reason']}")
    if "cost" in report:
        lines.append(f"- run: {report['cost']['seconds']:.0f} s, peak RSS {report['cost']['peak_rss_mb']} MB")
    lines += ["", "| stage | max abs err | rel err | non-finite | within tol |", "|---|---|---|---|---|"]
    for name, s in final["stages"].items():
        lines.append(f"| {name} | {_fmt(s['max_abs_err'])} | {_fmt(s['rel_err'])} | {s['precision_nonfinite']} | "
                     f"{'yes' if s['passed'] else 'no'} |")
    if report.get("pinned"):
        lines += ["", "| pinned node | op | stage | reason | found by | evidence |", "|---|---|---|---|---|---|"]
        for pin in report["pinned"]:
            why = pin["evidence"].get("explanation") or f"rel err {_fmt(pin['evidence'].get('rel_err'))}"
            lines.append(f"| {pin['node']} | {pin['op_type']} | {pin['stage']} | {pin['reason']} | {pin['found_by']} | "
                         f"{why} |")
    lines += ["", "| ORT CPU model | median s/window | vs fp32 |", "|---|---|---|"]
    for name, t in report["speed_onnxruntime_cpu"].items():
        lines.append(f"| {name} | {t['median_s']:.4f} | {t['relative_to_fp32']:.2f}x |")
    if report.get("plan"):
        lines += ["", "Next: `brr-export CHECKPOINT --out DIR --precision " + report["precision"]
                  + f" --ops standard --backend onnxruntime --precision-plan {report['plan']}`"]
    return "\n".join(lines) + "\n"


def _names(names: list[str], shown: int = 12) -> str:
    """A count and the first names (the JSON report has them all)."""
    if not names:
        return "none"
    return f"{len(names)}: {', '.join(names[:shown])}{' ...' if len(names) > shown else ''}"


def _fmt(value) -> str:
    return f"{value:.3g}" if isinstance(value, (int, float)) else str(value)
