"""Post-export check: the engine against PyTorch fp32 on synthetic and adversarial windows.

``verify_engine`` is the one place the exporter asks "does this engine agree with the model?"; it is
meant to delegate to ``brr.diff`` (stage-level diff) once that exists, keeping this signature.
A window fails when the engine gives a non-finite logit where PyTorch does not, or, on a
non-degenerate window, when |engine - torch| > atol + rtol * |torch| somewhere. Degenerate windows
(zeros, flat channels) have repeated Laplacian eigenvalues, where two correct backends may differ:
their error is reported, only non-finite output fails them.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from brr.atomic import atomic_write_text
from brr.runtime.runners.io import INPUT_NAME, OUTPUT_NAME

REPORT_FILE = "verification.json"
# (atol, rtol) on logits, per engine precision; reduced precisions are bounded by what they can hold.
TOLERANCES = {"fp32": (1e-4, 1e-4), "fp16": (0.1, 0.05), "bf16": (0.25, 0.05), "int8": (0.5, 0.1)}


@dataclass(frozen=True)
class WindowResult:
    window: str
    degenerate: bool
    max_abs_error: float
    engine_finite: bool
    reference_finite: bool
    passed: bool


@dataclass(frozen=True)
class Verification:
    verdict: str  # "pass" or "fail"
    precision: str
    tolerance: dict
    windows: list[WindowResult]
    report: Path

    @property
    def passed(self) -> bool:
        return self.verdict == "pass"


def verification_windows(n_samples: int, seed: int = 0) -> dict[str, tuple[np.ndarray, bool]]:
    """Name -> ((1, 19, n_samples) float32 window, degenerate?): what every engine must survive."""
    rng = np.random.default_rng(seed)
    t = np.arange(n_samples, dtype=np.float32) / 256.0
    noise = rng.standard_normal((1, 19, n_samples)).astype(np.float32)
    rhythm = (np.sin(2 * np.pi * 7 * t) * rng.uniform(0.5, 2, (1, 19, 1))).astype(np.float32) + 0.3 * noise
    spikes = noise.copy()
    spikes[:, :, n_samples // 3: n_samples // 3 + 10] *= 1000.0
    flat = noise.copy()
    flat[:, 3:9] = 0.0
    return {
        "noise": (noise, False), "rhythm_7hz": (rhythm, False), "spikes_1000x": (spikes, False),
        "saturated": (np.clip(noise, -0.5, 0.5) * 20, False),
        "mains_60hz": (np.broadcast_to(np.sin(2 * np.pi * 60 * t), (1, 19, n_samples)).astype(np.float32), False),
        "flat_channels": (flat, True), "zeros": (np.zeros((1, 19, n_samples), np.float32), True),
    }


def verify_engine(reference_checkpoint, engine_path: str | Path, precision: str, report_dir: str | Path,
                  n_samples: int, threads: int | None = None, only: Sequence[str] | None = None) -> Verification:
    """Run the engine and the fp32 checkpoint (dir or V3Detector) on the windows (or ``only`` those); report."""
    from brr.runtime.runners import TorchRunner, load_runner

    atol, rtol = TOLERANCES[precision]
    results = []
    with TorchRunner(reference_checkpoint) as reference, load_runner(engine_path, threads=threads) as engine:
        for name, (window, degenerate) in verification_windows(n_samples).items():
            if only is not None and name not in only:
                continue
            expected = reference.infer({INPUT_NAME: window})[OUTPUT_NAME]
            actual = np.asarray(engine.infer({INPUT_NAME: window})[OUTPUT_NAME], dtype=np.float32)
            ref_finite, eng_finite = bool(np.isfinite(expected).all()), bool(np.isfinite(actual).all())
            both = np.isfinite(expected) & np.isfinite(actual)
            error = np.abs(actual - expected)
            max_error = float(error[both].max()) if both.any() else float("nan")
            within = bool(np.all(error[both] <= atol + rtol * np.abs(expected[both])))
            passed = (eng_finite or not ref_finite) and (degenerate or within)
            results.append(WindowResult(name, degenerate, max_error, eng_finite, ref_finite, passed))
    verdict = "pass" if all(r.passed for r in results) else "fail"
    report = Path(report_dir) / REPORT_FILE
    atomic_write_text(report, json.dumps({
        "verdict": verdict, "engine": str(engine_path), "precision": precision,
        "tolerance": {"atol": atol, "rtol": rtol}, "windows": [asdict(r) for r in results],
    }, indent=1))
    return Verification(verdict, precision, {"atol": atol, "rtol": rtol}, results, report)
