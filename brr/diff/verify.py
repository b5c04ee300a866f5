"""Post-export verification: the diff of one engine against PyTorch fp32 on a fixed input suite.

``brr-export`` (and the main pipeline) call ``verify_engine`` after building an engine: synthetic
windows plus the adversarial suite, stage by stage, at the tolerance of the engine's precision. It
fails on precision-induced non-finite values and on divergence beyond that tolerance; a
basis-ambiguous eigendecomposition is reported, never failed. The full report stays on disk, and the
verdict goes into the artifact's manifest with the sha256 of the model it ran (what ``brr-infer``
checks before serving). A passing engine is also timed as ``brr-infer`` serves it (no probes, one window
per call), so that ``brr.artifact.load.select_engine`` serves the fastest verified engine of an export.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from pathlib import Path

from brr import machine
from brr.artifact.manifest import record_verification
from brr.diff.inputs import VERIFICATION_SYNTHETIC_WINDOWS, SyntheticWindows, verification_windows
from brr.diff.report import origin_sentences, write_report
from brr.diff.results import DiffReport
from brr.diff.run import run_diff

SPEED_REPEATS = 3


@dataclass(frozen=True)
class Verification:
    precision: str
    report: DiffReport
    report_dir: Path

    @property
    def passed(self) -> bool:
        return not self.report.failed

    @property
    def verdict(self) -> str:
        return self.report.verdict

    def summary(self) -> str:
        engine = self.report.engines[0]
        logits = engine.stages.get("logits")
        error = f"{logits.max_abs_err:.3g}" if logits is not None else "n/a"
        stage = engine.first_nonfinite_stage or engine.first_divergent_stage
        where = f", first stage off: {stage}" if stage else ""
        line = (f"{'pass' if self.passed else 'FAIL'}: {engine.verdict} on {len(self.report.inputs)} windows at atol "
                f"{engine.atol:g}/rtol {engine.rtol:g} (max |logit error| {error}{where}); report "
                f"{self.report_dir / 'report.md'}")
        if not self.passed:
            origins = origin_sentences(engine)
            node = engine.first_divergent_node
            if origins:
                line += "".join(f"\n  {sentence}" for sentence in origins)
            elif node:
                line += f"\n  first node beyond tolerance: {node.node} ({node.op_type}, stage {node.stage})"
            steps = self.report.next_steps()
            if steps:
                line += "\n  next: " + "\n  then: ".join(steps)
        return line


def verify_engine(reference, engine_path: str | Path, precision: str, report_dir: str | Path,
                  window_samples: int, synthetic_windows: int = VERIFICATION_SYNTHETIC_WINDOWS) -> Verification:
    """Diff ``engine_path`` against the fp32 ``reference`` (checkpoint dir or model), write the report and
    record the verdict in the artifact's manifest."""
    inputs = verification_windows(window_samples, synthetic_windows)
    report = run_diff(reference, [engine_path], inputs, fail_on="divergence")
    report.data_arguments = ["--synthetic", str(synthetic_windows)]
    write_report(report, report_dir)
    verification = Verification(precision, report, Path(report_dir))
    engine = report.engines[0]
    origin = engine.origin
    timing = serving_speed(engine_path, window_samples) if verification.passed else {}
    record_verification(engine_path, timing | {
        "passed": verification.passed, "verdict": report.verdict, "report": str(Path(report_dir).resolve()),
        "atol": engine.atol, "rtol": engine.rtol, "inputs": report.inputs,
        "first_nonfinite_stage": engine.first_nonfinite_stage, "first_divergent_stage": engine.first_divergent_stage,
        "origin_node": origin.node if origin else None,
    })
    return verification


def serving_speed(engine_path: str | Path, window_samples: int) -> dict:
    """The engine's median seconds per window as brr-infer serves it (no probes, one window per call,
    after a warm-up), and the machine it was timed on."""
    from brr.artifact.load import load_runner

    _, window = next(SyntheticWindows(1, window_samples).labelled())
    with load_runner(engine_path) as runner:
        runner.infer(window)
        times = []
        for _ in range(SPEED_REPEATS):
            start = time.perf_counter()
            runner.infer(window)
            times.append(time.perf_counter() - start)
    return {"serving_s_per_window": round(statistics.median(times), 4), "timed_on": machine.describe()}
