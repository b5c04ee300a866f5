"""A non-finite training step, kept so that it can be reproduced: ``OUT/nonfinite/step_<n>/``.

A step whose values go non-finite is skipped, and its evidence saved before anything changes it: the
weights it ran with (``weights/``, a checkpoint: the step made no update), the batch's windows as the
model saw them (``windows.npz``, the saved-windows format ``brr-diff --data`` reads, each labelled with
its recording and start), and ``report.json`` with the stage, the first module and operation that went
non-finite (``brr.train.nonfinite``) and the ``brr-diff`` command that replays the windows through the
fp32 reference and the training precision's autocast.
"""

from __future__ import annotations

import io
import json
import shlex
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from brr.atomic import atomic_write_bytes, atomic_write_text
from brr.diff.inputs import SAVED_LABELS_KEY, SAVED_WINDOWS_KEY
from brr.model import V3Detector, save_checkpoint
from brr.train.nonfinite import NonfiniteFinding
from brr.train.precision import TrainPrecision

INCIDENTS_FOLDER = "nonfinite"


@dataclass(frozen=True)
class NonfiniteStep:
    """One skipped step: where it first went non-finite and where its evidence lies."""

    step: int
    stage: str  # "input", a probe name, "loss" or "gradient of <parameter>"
    finding: NonfiniteFinding | None  # the first module and operation; None where the forward stayed finite
    windows: list[str]  # "<recording>@<start>s" of each window of the batch
    folder: Path
    precision: TrainPrecision

    @property
    def repro_command(self) -> str:
        # fp32 training has no engine precision of its own: fp16 autocast beside the fp32 reference shows
        # both whether fp32 itself is non-finite there and what reduced precision adds.
        engine = "torch:bf16" if self.precision is TrainPrecision.BF16 else "torch:fp16"
        return shlex.join(["brr-diff", str(self.folder / "weights"), engine, "--data",
                           str(self.folder / "windows.npz"), "--no-adversarial", "-o",
                           str(self.folder / "diff-report")])

    def describe(self) -> str:
        where = self.finding.describe() if self.finding is not None else (
            f"non-finite first at {self.stage}; the forward pass is finite, so it arose in the backward pass")
        return (f"step {self.step} ({self.precision}) skipped: {where}\n"
                f"  windows: {', '.join(self.windows)}\n"
                f"  saved in {self.folder}; reproduce with:\n    {self.repro_command}")

    def to_dict(self) -> dict:
        return {"step": self.step, "stage": self.stage, "precision": str(self.precision),
                "finding": None if self.finding is None else self.finding.to_dict(), "windows": self.windows,
                "folder": str(self.folder), "repro_command": self.repro_command}


def save_nonfinite_step(out: Path, step: int, stage: str, finding: NonfiniteFinding | None, model: V3Detector,
                        signals: np.ndarray, windows: list[str], precision: TrainPrecision) -> NonfiniteStep:
    """Write the step's evidence (see the module docstring); the report last, once the rest is in place."""
    folder = Path(out) / INCIDENTS_FOLDER / f"step_{step:07d}"
    incident = NonfiniteStep(step, stage, finding, windows, folder, precision)
    save_checkpoint(model, folder / "weights")
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **{SAVED_WINDOWS_KEY: np.asarray(signals, dtype=np.float32),
                                   SAVED_LABELS_KEY: np.asarray(windows)})
    atomic_write_bytes(folder / "windows.npz", buffer.getvalue())
    atomic_write_text(folder / "report.json", json.dumps(incident.to_dict(), indent=2) + "\n")
    return incident
