"""``run_diff``: compare engines with the fp32 PyTorch reference, stage by stage, then node by node.

1. Polygraphy's ``Comparator.run(streaming=True)`` runs the reference (with probes) and every
   engine on one input at a time; each output pair is reduced to statistics at once (probe level).
2. Where an input goes non-finite, node level (``brr.diff.localise``) finds the tensor where it
   starts, on every such input; where it only diverges, the first node of the first stage beyond
   tolerance, once per engine and stage.

Memory: one input's reference and engine outputs (the probes, a few MB a window) and one run's
tensors at a time; node-level runs reduce tensors in-graph or mark a handful, sessions give their
memory back after each run. Nothing is kept per input but statistics, so the peak does not grow with
the number of inputs, nodes or engines.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

from polygraphy.backend.base import BaseRunner
from polygraphy.comparator import Comparator

from brr.artifact.files import artifact_folders, is_checkpoint
from brr.artifact.load import tuned_postprocess
from brr.backends.onnxrt.runner import lean_onnxruntime_runner
from brr.backends.torch.runner import AUTOCAST_DTYPES, TorchRunner
from brr.diff.compare import LaplacianSpectra, TensorStats
from brr.diff.engines import Engine, artifact_engines, split_engine
from brr.diff.inputs import WindowLoader
from brr.diff.localise import NodeLocaliser
from brr.diff.openvino_nodes import node_localiser
from brr.diff.probes import compare_outputs
from brr.diff.report import write_report
from brr.diff.repro import REPRO_FOLDER, Judging, ReproWriter
from brr.diff.results import DiffReport, EngineResult, InputResult
from brr.diff.verdict import FailOn, Verdict
from brr.errors import UsageError
from brr.events.postprocess import PostprocessConfig
from brr.model import V3Detector
from brr.model.contract import OUTPUT_NAME
from brr.resources import peak_rss_mb
from brr.tolerances import TOLERANCES

log = logging.getLogger(__name__)

TORCH_ENGINE_PREFIX = "torch:"  # "torch:fp16", "torch:bf16": the reference under autocast
SPLIT_ENGINE_PREFIX = "split:"  # "split:FOLDER": the artifact's front and rest, composed (split_engine)


def run_diff(reference: str | Path | V3Detector | BaseRunner, engines: Iterable[Engine | BaseRunner | str | Path],
             inputs: WindowLoader | Iterable[dict], atol: float | None = None, rtol: float | None = None,
             report_dir: str | Path | None = None, fail_on: str = "nonfinite", node_level: bool = True,
             repro_dir: str | Path | None = None, repro_every_input: bool = False) -> DiffReport:
    """Compare ``engines`` with ``reference`` on ``inputs``; write the reports to ``report_dir`` if given.

    ``reference``: a checkpoint folder or a model (run in fp32 with probes), or any runner.
    ``engines``: ``Engine`` objects, Polygraphy runners, ``brr-export`` artifact folders (or the ``--out``
    folder: every artifact in it), or
    ``"torch:fp16"`` / ``"torch:bf16"`` (the reference model under autocast), or ``"split:FOLDER"`` (an
    artifact's front and rest graphs, composed).
    ``atol``/``rtol``: None follows each engine's precision (``TOLERANCES``).
    ``report.failed`` says whether ``fail_on`` ('nonfinite' | 'divergence' | 'never') is met.
    ``repro_dir``: where the repro bundle (``brr.diff.repro``) goes, by default ``report_dir``/repro: the
    inputs some engine is not accepted on, or every input with ``repro_every_input``.
    One line per input and per node-level search is logged.
    """
    try:
        failing = FailOn(fail_on)
    except ValueError:
        raise UsageError(f"fail_on must be 'nonfinite', 'divergence' or 'never', got {fail_on!r}") from None
    started = time.perf_counter()
    reference_runner = reference if isinstance(reference, BaseRunner) else TorchRunner(reference, probes=True,
                                                                                      name="fp32-reference")
    engine_list = _engines(reference, list(engines))
    report = DiffReport(_reference_name(reference), failing)
    results = [EngineResult(e.name, e.precision, *_tolerance(e.precision, atol, rtol), path=e.path,
                            node_level_note=e.node_level_note) for e in engine_list]
    fed = FedInputs(inputs)
    postprocess = _postprocess(reference)
    if repro_dir is None and report_dir is not None:
        repro_dir = Path(report_dir) / REPRO_FOLDER
    repro = None if repro_dir is None else ReproWriter.for_run(
        repro_dir, repro_every_input, reference_name=report.reference, reference_runner=reference_runner,
        engines=engine_list, postprocess=postprocess)
    with contextlib.closing(NodeLevel()) as localisation:
        stream = Comparator.run([reference_runner] + [e.runner for e in engine_list], data_loader=iter(fed),
                                streaming=True)
        for run in stream:
            _compare_input(run, fed, reference_runner, engine_list, results, localisation if node_level else None,
                           postprocess)
            log.info(f"input {len(fed.labels)} {fed.label}: "
                     + ", ".join(f"{r.name} {r.inputs[-1].verdict}" for r in results)
                     + f"; {time.perf_counter() - started:.0f} s, peak RSS {peak_rss_mb():.0f} MB")
            if repro is not None:
                repro.add(fed.label, fed.feed, run, all(r.inputs[-1].verdict.accepted for r in results))
    report.inputs = fed.labels
    report.engines = results
    if repro is not None:
        written = repro.finish(report)
        report.repro = str(written) if written is not None else None
    report.cost = {"seconds": round(time.perf_counter() - started, 1), "peak_rss_mb": round(peak_rss_mb()),
                   "node_level_runs": sum(i.node_level.runs for r in results for i in r.inputs if i.node_level)}
    if report_dir is not None:
        write_report(report, report_dir)
    return report


class FedInputs:
    """The inputs as ``Comparator.run`` pulls them, one per iteration, each remembered with its label.

    Comparator yields an iteration's outputs right after pulling its feed, and the outputs do not carry
    the feed: the last feed pulled (``feed``, ``label``) is the one whose outputs are being compared.
    """

    def __init__(self, inputs: WindowLoader | Iterable[dict]):
        self._labelled = inputs.labelled() if isinstance(inputs, WindowLoader) else (
            (f"input-{i}", f) for i, f in enumerate(inputs))
        self.labels: list[str] = []
        self.feed: dict = {}

    def __iter__(self) -> Iterator[dict]:
        for label, feed in self._labelled:
            self.labels.append(label)
            self.feed = feed
            yield feed

    @property
    def label(self) -> str:
        return self.labels[-1]


def _compare_input(run, fed: FedInputs, reference_runner: BaseRunner, engines: list[Engine],
                   results: list[EngineResult], node_level: NodeLevel | None, postprocess: PostprocessConfig) -> None:
    """One input: each engine's probes against the reference's, then node level where it can run."""
    ref_out = run[reference_runner.name][0]
    spectrum = _spectrum(reference_runner, ref_out)
    model = getattr(reference_runner, "model", None)
    top_k = model.config.edge_top_k if isinstance(model, V3Detector) else None
    for engine, result in zip(engines, results):
        eng_out = run[engine.runner.name][0]
        outcome = compare_outputs(fed.label, fed.feed, ref_out, eng_out, spectrum, result.atol, result.rtol, top_k,
                                  postprocess)
        for name, stage in outcome.stages.items():
            result.stages.setdefault(name, TensorStats()).merge(stage.stats)
        if node_level is not None and engine.localisable:
            node_level.localise(engine, outcome, fed.feed, eng_out, result)
            if outcome.node_level is not None:
                log.info(f"{engine.name} {fed.label}: node level ({outcome.node_level.method}) "
                         f"{outcome.node_level.runs} runs, {outcome.node_level.seconds:.1f} s")
        result.inputs.append(outcome)


class NodeLevel:
    """Node level over a diff's inputs: one localiser per engine, its sessions kept from input to input,
    and the (engine, stage) pairs already searched node by node (one bisection each is enough)."""

    def __init__(self):
        self.localisers: dict[str, NodeLocaliser] = {}
        self.bisected: set[tuple[str, str | None]] = set()

    def close(self) -> None:
        for localiser in self.localisers.values():
            localiser.close()

    def localise(self, engine: Engine, outcome: InputResult, feed: dict, eng_out, result: EngineResult) -> None:
        """Node level on one input: every input is scanned for non-finite tensors, so a value sanitised
        before any probe (a guard's clamp or nan_to_num) is still a failure with its origin named; an
        input that only diverges gets the first node beyond tolerance, once per stage. Each node named
        the first time is judged origin or propagator down its path to a probe."""
        localiser = self.localisers.get(engine.name) or self.localisers.setdefault(
            engine.name, node_localiser(engine, lean_onnxruntime_runner, result.atol, result.rtol))
        if outcome.verdict.accepted and not localiser.scans_passing_inputs:
            return
        logits = eng_out[OUTPUT_NAME] if OUTPUT_NAME in eng_out else None
        level = localiser.scan(feed, logits)
        result.merge_ranges(localiser.tensors, level.ranges, outcome.input)
        level.ranges = {}  # merged into the engine's; keep no copy per input
        found = level.first_nonfinite
        if found is None and outcome.verdict.nonfinite_kind is not None and level.note is None:
            level.note = ("every tensor the engine shares with its fp32 graph is finite: the non-finite values "
                          "arise where the two graphs have no tensor in common")
        if found is not None:
            outcome.found_nonfinite(found.kind, found.stage)
        key = (engine.name, outcome.first_divergent_stage)
        if found is None and outcome.verdict is Verdict.DIVERGENCE and key not in self.bisected:
            self.bisected.add(key)
            divergent = localiser.first_divergent(feed, outcome.first_divergent_stage, result.atol, result.rtol,
                                                  logits)
            level.runs += divergent.runs
            level.seconds += divergent.seconds
            level.method, level.first_divergent, level.note = "statistics+bisection", divergent.first_divergent, \
                divergent.note or level.note
            if divergent.reproduced is False:
                level.reproduced, level.reproduction_error = False, divergent.reproduction_error
        localiser.judge_roles(level, feed, result.atol, result.rtol)
        outcome.node_level = level


def _postprocess(reference) -> PostprocessConfig:
    """The post-processing the reference checkpoint was tuned with (what is served), else the defaults."""
    if isinstance(reference, (str, Path)) and is_checkpoint(Path(reference)):
        tuned = tuned_postprocess(reference)
        if tuned:
            return PostprocessConfig(**tuned)
    return PostprocessConfig()


def _reference_name(reference: str | Path | V3Detector | BaseRunner) -> str:
    if isinstance(reference, BaseRunner):
        return str(reference.name)
    return str(getattr(reference, "config", None) and reference.config.name or reference)


def _tolerance(precision: str, atol: float | None, rtol: float | None) -> tuple[float, float]:
    default_atol, default_rtol = TOLERANCES.get(precision, TOLERANCES["fp32"])
    return (default_atol if atol is None else atol), (default_rtol if rtol is None else rtol)


def _engines(reference, engines: list) -> list[Engine]:
    prefixed = (TORCH_ENGINE_PREFIX, SPLIT_ENGINE_PREFIX)
    # The folder brr-export --out wrote stands for every artifact in it (engines paired with its fp32 ONNX).
    engines = [artifact for e in engines for artifact in (
        (artifact_folders(Path(e)) or [e]) if isinstance(e, (str, Path)) and not str(e).startswith(prefixed)
        else [e])]
    artifacts = [e for e in engines if isinstance(e, (str, Path)) and not str(e).startswith(prefixed)]
    by_path = {str(a): e for a, e in zip(artifacts, artifact_engines(artifacts))} if artifacts else {}
    out = []
    for e in engines:
        if isinstance(e, Engine):
            out.append(e)
        elif isinstance(e, BaseRunner):
            out.append(Engine(e.name, e, node_level_note="a runner without its ONNX graph: compared at its probes"))
        elif str(e).startswith(SPLIT_ENGINE_PREFIX):
            out.append(split_engine(str(e)[len(SPLIT_ENGINE_PREFIX):]))
        elif str(e).startswith(TORCH_ENGINE_PREFIX):
            precision = str(e)[len(TORCH_ENGINE_PREFIX):]
            if precision not in AUTOCAST_DTYPES or isinstance(reference, BaseRunner):
                raise UsageError(f"{e}: needs a checkpoint or model reference and one of "
                                 f"{[TORCH_ENGINE_PREFIX + p for p in AUTOCAST_DTYPES]}")
            out.append(Engine(f"torch-{precision}", TorchRunner(reference, probes=True, autocast=precision,
                                                                name=f"torch-{precision}"), precision,
                              node_level_note="PyTorch autocast has no ONNX graph: compared at its probes"))
        else:
            engine = by_path[str(e)]
            engine.path = str(e)
            out.append(engine)
    names = [e.name for e in out]
    if len(set(names)) != len(names):
        raise UsageError(f"engine names must be unique, got {names}")
    return out


def _spectrum(reference_runner: BaseRunner, ref_out) -> LaplacianSpectra | None:
    """The reference Laplacian spectra behind ``laplacian_pe``, if the reference is the detector."""
    return Judging.of(reference_runner).spectrum(ref_out)
