"""Verification of an artifact's front and rest graphs (``brr.model.front``), composed, against PyTorch fp32.

Overlap inference serves the two graphs of an artifact instead of its one model: ``verify_split`` runs them
one after the other on the windows that verify the model (``brr.diff.verify``), judges them with the same
verdict and tolerance, and records the outcome in the manifest with the sha256 of both files, which
``brr-infer --window-mode overlap`` checks before serving them (``brr.artifact.manifest.served_split``).
"""

from __future__ import annotations

from pathlib import Path

from brr.artifact.manifest import record_split_verification
from brr.diff.engines import split_engine
from brr.diff.inputs import VERIFICATION_SYNTHETIC_WINDOWS, verification_windows
from brr.diff.report import write_report
from brr.diff.run import SPLIT_ENGINE_PREFIX, run_diff
from brr.diff.verify import Verification


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
