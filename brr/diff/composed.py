"""Verification of an artifact's front and rest graphs (``brr.model.front``), composed, against PyTorch fp32.

Overlap inference serves the two graphs of an artifact instead of its one model: ``verify_split`` runs them
one after the other on the windows that verify the model (``brr.diff.verify``), judges them with the same
verdict and tolerance, and records the outcome in the manifest with the sha256 of both files, which
``brr-infer --window-mode overlap`` checks before serving them (``brr.artifact.manifest.served_split``).
``WindowsFed`` records what each window of either way was fed and gave; ``ProbeJudge`` judges one window of overlap inference against the same window per-window, at the probes:
where the logits alone differ, whether a rounding tipped an adjacency near-tie or an eigenbasis (two correct
answers) or the overlap features are wrong.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from brr.artifact.manifest import record_split_verification
from brr.diff.engines import split_engine
from brr.diff.inputs import VERIFICATION_SYNTHETIC_WINDOWS, verification_windows
from brr.diff.probes import compare_outputs
from brr.diff.report import write_report
from brr.diff.repro import Judging
from brr.diff.results import InputResult
from brr.diff.run import SPLIT_ENGINE_PREFIX, run_diff
from brr.diff.verify import Verification
from brr.model.contract import FRONT_OUTPUT_NAME, INPUT_NAME, OUTPUT_NAME


def verify_split(reference, directory: str | Path, report_dir: str | Path, window_samples: int,
                 synthetic_windows: int = VERIFICATION_SYNTHETIC_WINDOWS) -> Verification:
    """Diff the front and rest of the artifact in ``directory``, composed, against the fp32 ``reference``
    (checkpoint dir or model); write the report and record the verdict in the artifact's manifest."""
    engine = split_engine(directory)
    report = run_diff(reference, [engine], verification_windows(window_samples, synthetic_windows),
                      fail_on="divergence")
    report.data_arguments = ["--synthetic", str(synthetic_windows)]
    write_report(report, report_dir)
    result = report.engines[0]
    verification = Verification(engine.precision, report, Path(report_dir))
    record_split_verification(directory, {
        "passed": verification.passed, "verdict": report.verdict, "report": str(Path(report_dir).resolve()),
        "atol": result.atol, "rtol": result.rtol, "inputs": report.inputs,
        "first_nonfinite_stage": result.first_nonfinite_stage, "first_divergent_stage": result.first_divergent_stage,
        "engine": f"{SPLIT_ENGINE_PREFIX}{directory}",
    })
    return verification


class ProbeJudge:
    """A window's verdict at the probes, as brr-diff gives it: the engine's whole model on the window's
    samples (per-window inference) is the reference, its rest on the window's overlap features the engine.
    ``whole`` and ``rest``: the engine's runners of its model and of its rest, with their probes."""

    def __init__(self, whole, rest, judging: Judging, atol: float, rtol: float):
        self.whole, self.rest, self.judging, self.atol, self.rtol = whole, rest, judging, atol, rtol

    def __call__(self, label: str, samples: np.ndarray, overlap_features: np.ndarray) -> InputResult:
        reference = self._run(self.whole, {INPUT_NAME: samples[None]})
        engine = {FRONT_OUTPUT_NAME: overlap_features[None],
                  **self._run(self.rest, {FRONT_OUTPUT_NAME: overlap_features[None]})}
        return compare_outputs(label, {}, reference, engine, self.judging.spectrum(reference), self.atol,
                               self.rtol, self.judging.top_k, self.judging.postprocess)

    @staticmethod
    def _run(runner, feed) -> dict[str, np.ndarray]:
        # Copies: a runner may hand out its own buffers, which its next inference overwrites.
        return {name: np.array(value) for name, value in runner.infer(feed).items()}


class WindowsFed:
    """A runner (per window) or split runners (overlap) that keeps every window's logits, in order, and what
    its model or rest was fed: the window's samples (per window) or its front features (overlap)."""

    def __init__(self, engine):
        self.engine = engine
        self.geometry = getattr(engine, "geometry", None)
        self.logits: list[np.ndarray] = []
        self.inputs: list[np.ndarray] = []

    def infer(self, feed):
        out = self.engine.infer(feed)
        self.logits.extend(np.array(out[OUTPUT_NAME]))
        self.inputs.extend(np.array(feed[INPUT_NAME]))
        return out

    def run_front(self, eeg):
        return self.engine.run_front(eeg)

    def run_rest(self, electrodes):
        logits = self.engine.run_rest(electrodes)
        self.logits.extend(np.array(logits))
        self.inputs.extend(np.array(electrodes))
        return logits
