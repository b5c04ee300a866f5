"""Post-export verification: the diff of one engine against PyTorch fp32 on a fixed input suite.

``brr-export`` (and the main pipeline) call ``verify_engine`` after building an engine: synthetic
windows plus the adversarial suite, stage by stage, with a tolerance that fits the engine's
precision. It fails on precision-induced non-finite values and on divergence beyond that tolerance;
a basis-ambiguous eigendecomposition is reported, never failed. The full report stays on disk.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from brr.diff.inputs import AdversarialWindows, ChainedWindows, SyntheticWindows
from brr.diff.report import DiffReport
from brr.diff.run import run_diff

# (atol, rtol) per engine precision: what the precision can hold over this network's stages.
TOLERANCES = {"fp32": (1e-3, 1e-3), "fp16": (0.1, 0.05), "bf16": (0.25, 0.05), "int8": (0.5, 0.1)}


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
        where = f", first stage off: {engine.first_divergent_stage}" if engine.first_divergent_stage else ""
        return (f"{'pass' if self.passed else 'FAIL'}: {engine.verdict} on {len(self.report.inputs)} windows "
                f"(max |logit error| {error}{where}); report {self.report_dir / 'report.md'}")


def verify_engine(reference, engine_path: str | Path, precision: str, report_dir: str | Path,
                  window_samples: int, synthetic_windows: int = 2, fp32_artifact: str | Path | None = None
                  ) -> Verification:
    """Diff ``engine_path`` against the fp32 ``reference`` (checkpoint dir or model); write the report.

    ``fp32_artifact``: the fp32 ONNX export the engine was built from; given, it is diffed too and
    lets the diff localise a reduced-precision failure node by node.
    """
    atol, rtol = TOLERANCES[precision]
    inputs = ChainedWindows([SyntheticWindows(synthetic_windows, window_samples),
                             AdversarialWindows(window_samples)])
    engines = [engine_path]
    if fp32_artifact is not None and Path(fp32_artifact) != Path(engine_path):
        engines.append(fp32_artifact)
    report = run_diff(reference, engines, inputs, atol=atol, rtol=rtol, report_dir=report_dir,
                      fail_on="divergence")
    return Verification(precision, report, Path(report_dir))
