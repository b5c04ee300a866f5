"""``run_diff``: compare engines with the fp32 PyTorch reference, stage by stage, then node by node.

1. Polygraphy's ``Comparator.run(streaming=True)`` runs the reference (with probes) and every
   engine on one input at a time; each output pair is reduced to statistics at once (probe level).
2. Where an input is off (non-finite or divergent) and the engine runs an ONNX graph paired with its
   fp32 graph, ``brr.diff.localise`` compares node outputs to find where it starts (node level).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
from polygraphy.backend.base import BaseRunner
from polygraphy.comparator import Comparator
from polygraphy.logger import G_LOGGER

from brr.diff.compare import EigenspaceStats, SelectionStats, TensorStats, reference_spectrum
from brr.diff.engines import Engine, artifact_engines
from brr.diff.inputs import WindowLoader
from brr.diff.localise import DEFAULT_MAX_MARKED_BYTES, NodeComparison
from brr.diff.report import DiffReport, EngineResult, InputResult, StageResult, write_report
from brr.errors import UsageError
from brr.model import PROBE_NAMES, V3Detector
from brr.runtime.runners.torch import AUTOCAST_DTYPES, TorchRunner

TORCH_ENGINE_PREFIX = "torch:"  # "torch:fp16", "torch:bf16": the reference under autocast


def run_diff(reference: str | Path | V3Detector | BaseRunner, engines: Iterable[Engine | BaseRunner | str | Path],
             inputs: WindowLoader | Iterable[dict], atol: float = 1e-3, rtol: float = 1e-3,
             report_dir: str | Path | None = None, fail_on: str = "nonfinite",
             max_marked_bytes: int = DEFAULT_MAX_MARKED_BYTES) -> DiffReport:
    """Compare ``engines`` with ``reference`` on ``inputs``; write the reports to ``report_dir`` if given.

    ``reference``: a checkpoint folder or a model (run in fp32 with probes), or any runner.
    ``engines``: ``Engine`` objects, Polygraphy runners, ``brr-export`` artifact folders, or
    ``"torch:fp16"`` / ``"torch:bf16"`` (the reference model under autocast).
    ``report.failed`` says whether ``fail_on`` ('nonfinite' | 'divergence' | 'never') is met.
    """
    if fail_on not in ("nonfinite", "divergence", "never"):
        raise UsageError(f"fail_on must be 'nonfinite', 'divergence' or 'never', got {fail_on!r}")
    reference_runner = reference if isinstance(reference, BaseRunner) else TorchRunner(reference, probes=True,
                                                                                      name="fp32-reference")
    engine_list = _engines(reference, list(engines))
    report = DiffReport(str(reference.name if isinstance(reference, BaseRunner) else
                            getattr(reference, "config", None) and reference.config.name or reference),
                        atol, rtol, fail_on)
    results = [EngineResult(e.name, e.precision, _node_level_note(e)) for e in engine_list]
    comparisons: dict[str, NodeComparison] = {}
    labels: list[str] = []
    current: dict = {}  # the feed of the iteration being compared: Comparator pulls one per iteration
    loader = inputs.labelled() if isinstance(inputs, WindowLoader) else ((f"input-{i}", f) for i, f in enumerate(inputs))

    def feeds():
        for label, feed in loader:
            labels.append(label)
            current["feed"] = feed
            yield feed

    with G_LOGGER.verbosity(G_LOGGER.ERROR):
        stream = Comparator.run([reference_runner] + [e.runner for e in engine_list], data_loader=feeds(),
                                streaming=True)
        for run in stream:
            feed = current["feed"]
            ref_out = run[reference_runner.name][0]
            spectrum = _spectrum(reference_runner, ref_out)
            model = getattr(reference_runner, "model", None)
            top_k = model.config.edge_top_k if isinstance(model, V3Detector) else None
            for engine, result in zip(engine_list, results):
                outcome = compare_outputs(labels[-1], feed, ref_out, run[engine.runner.name][0], spectrum, atol, rtol,
                                          top_k)
                for name, stage in outcome.stages.items():
                    result.stages.setdefault(name, TensorStats()).merge(stage.stats)
                kind = {"nonfinite_precision": "precision", "nonfinite_fp32": "fp32"}.get(outcome.verdict)
                if _should_localise(engine, outcome.verdict, kind):
                    comparison = comparisons.get(engine.name) or comparisons.setdefault(
                        engine.name, NodeComparison(engine, batch=len(next(iter(feed.values()))),
                                                    max_marked_bytes=max_marked_bytes))
                    outcome.node_level = comparison.localise(feed, atol, rtol, kind)
                    for node, (op_type, stage, stats) in outcome.node_level.nodes.items():
                        result.nodes.setdefault(node, (op_type, stage, TensorStats()))[2].merge(stats)
                    outcome.node_level.nodes = {}  # merged into the engine's; keep no copy per input
                result.inputs.append(outcome)
    report.inputs = labels
    report.engines = results
    if report_dir is not None:
        write_report(report, report_dir)
    return report


def _engines(reference, engines: list) -> list[Engine]:
    artifacts = [e for e in engines if isinstance(e, (str, Path)) and not str(e).startswith(TORCH_ENGINE_PREFIX)]
    by_path = {str(a): e for a, e in zip(artifacts, artifact_engines(artifacts))} if artifacts else {}
    out = []
    for e in engines:
        if isinstance(e, Engine):
            out.append(e)
        elif isinstance(e, BaseRunner):
            out.append(Engine(e.name, e))
        elif str(e).startswith(TORCH_ENGINE_PREFIX):
            precision = str(e)[len(TORCH_ENGINE_PREFIX):]
            if precision not in AUTOCAST_DTYPES or isinstance(reference, BaseRunner):
                raise UsageError(f"{e}: needs a checkpoint or model reference and one of "
                                 f"{[TORCH_ENGINE_PREFIX + p for p in AUTOCAST_DTYPES]}")
            out.append(Engine(f"torch-{precision}", TorchRunner(reference, probes=True, autocast=precision,
                                                                name=f"torch-{precision}"), precision))
        else:
            out.append(by_path[str(e)])
    names = [e.name for e in out]
    if len(set(names)) != len(names):
        raise UsageError(f"engine names must be unique, got {names}")
    return out


def _node_level_note(engine: Engine) -> str | None:
    if engine.onnx_model is None or engine.runner_for is None:
        return "no ONNX graph to mark: compared at its outputs only"
    if engine.fp32_model is None:
        return "no fp32 ONNX graph of the same ops mode given: compared at its outputs only"
    return None


def _should_localise(engine: Engine, verdict: str, kind: str | None) -> bool:
    if not engine.localisable or verdict in ("clean", "basis_ambiguous", "nonfinite_input"):
        return False
    # An fp32 graph against itself only has fp32 defects to find.
    return kind == "fp32" or engine.onnx_model is not engine.fp32_model


def _spectrum(reference_runner: BaseRunner, ref_out) -> tuple[np.ndarray, np.ndarray, int] | None:
    """The reference Laplacian spectra behind ``laplacian_pe``, if the reference is the detector."""
    model = getattr(reference_runner, "model", None)
    if not isinstance(model, V3Detector) or "adjacency" not in ref_out or not model.config.use_dynamic_pe:
        return None
    cfg = model.config
    values, vectors = reference_spectrum(ref_out["adjacency"], cfg.semi_dynamic_interval, cfg.degree_clamp,
                                         cfg.laplacian_shift)
    return values, vectors, cfg.semi_dynamic_interval


def compare_outputs(label: str, feed: dict, ref_out, eng_out, spectrum, atol: float, rtol: float,
                    top_k: int | None = None) -> InputResult:
    """Probe level for one input: each stage's statistics and status, and the input's verdict.

    ``spectrum`` = (eigenvalues, eigenvectors, interval) of the reference Laplacians, or None;
    ``top_k`` = the adjacency's k, to recognise selections that differ only at near-ties.
    """
    names = [n for n in PROBE_NAMES if n in ref_out and n in eng_out] or [n for n in ref_out if n in eng_out]
    stages: dict[str, StageResult] = {}
    for name in names:
        ref, eng = np.asarray(ref_out[name]), np.asarray(eng_out[name], dtype=np.float32)
        stats = TensorStats()
        stats.add(ref, eng, atol, rtol)
        stage = StageResult(_status(stats), stats)
        if name == "laplacian_pe" and spectrum is not None and stage.status == "divergence":
            values, vectors, interval = spectrum
            stage.eigenspace = EigenspaceStats()
            stage.eigenspace.add(values, vectors, eng[:, ::interval].reshape(len(values), *eng.shape[-2:]), atol, rtol)
            stage.status = "basis_ambiguous" if stage.eigenspace.passed else "divergence"
        elif name == "adjacency" and stage.status == "divergence":
            stage.selection = SelectionStats()
            stage.selection.add(ref, eng, atol, rtol,
                                ref_out["edge_weights"] if "edge_weights" in ref_out else None, top_k)
            # Flips at near-ties are as correct as a rotated eigenbasis: ambiguous, not divergent.
            stage.status = ("basis_ambiguous" if stage.selection.tie_ambiguous else
                            "clean" if stage.selection.passed else "divergence")
        stages[name] = stage
    statuses = [s.status for s in stages.values()]
    first_off = next((n for n, s in stages.items() if s.status != "clean"), None)
    if not all(np.isfinite(v).all() for v in feed.values()):
        verdict = "nonfinite_input"
    elif "nonfinite_fp32" in statuses:
        verdict = "nonfinite_fp32"
    elif "nonfinite_precision" in statuses:
        verdict = "nonfinite_precision"
    elif first_off is None:
        verdict = "clean"
    else:
        # Stages after a basis-ambiguous eigendecomposition inherit its (correct) difference.
        verdict = "basis_ambiguous" if stages[first_off].status == "basis_ambiguous" else "divergence"
    return InputResult(label, verdict, first_off, stages)


def _status(stats: TensorStats) -> str:
    if stats.ref_nonfinite:
        return "nonfinite_fp32"
    if stats.precision_nonfinite:
        return "nonfinite_precision"
    return "clean" if stats.passed else "divergence"
