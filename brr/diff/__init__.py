"""Stage- and node-level comparison of engines with the fp32 PyTorch reference, NaN origin, reports.

Entry point: :func:`run_diff`. See ``brr/cli/diff.py`` for the command and
``report.schema.json`` for the report format.
"""

from brr.diff.engines import ArtifactError, Engine, artifact_engines, onnxruntime_engine
from brr.diff.inputs import AdversarialWindows, ChainedWindows, EdfWindows, SyntheticWindows
from brr.diff.report import validate, write_report
from brr.diff.results import DiffReport
from brr.diff.run import TOLERANCES, run_diff
from brr.diff.verdict import Verdict

__all__ = [
    "TOLERANCES", "AdversarialWindows", "ArtifactError", "ChainedWindows", "DiffReport", "EdfWindows", "Engine",
    "SyntheticWindows", "Verdict", "artifact_engines", "onnxruntime_engine", "run_diff", "validate",
    "write_report",
]
