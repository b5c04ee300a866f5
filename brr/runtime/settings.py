"""What a ``brr-infer`` run is asked to do, checked before anything runs."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from brr.data.preprocess import TARGET_RATE
from brr.data.quality import DEFAULT_MAX_UNUSABLE_CHANNELS
from brr.data.recording import WINDOW_S
from brr.errors import UsageError
from brr.events.postprocess import PostprocessConfig

EXECUTORS = ("local", "ray")
# --format name -> the suffix of its file (brr.runtime.outputs)
OUTPUT_FORMATS = {"csv_bi": ".csv_bi", "tsv": "_events.tsv", "json": "_events.json"}


class InferenceUsageError(UsageError):
    """Bad settings, inputs or engine: nothing was run (``brr-infer`` exits 2)."""


class WindowMode(StrEnum):
    """How a recording's windows run: each through the whole detector, or sharing one run of its front
    over the recording (``brr.model.front``), so that only the rest runs per window."""

    PER_WINDOW = "per-window"
    OVERLAP = "overlap"


@dataclass(frozen=True)
class InferenceSettings:
    """Everything about a run except the engine, the inputs and the output folder."""

    stride_s: float = 10.0
    # Windows per engine call; None: the engine's default (``brr.runtime.worker.default_batch``).
    batch_size: int | None = None
    threads: int | None = None
    device: str = "cpu"
    formats: tuple[str, ...] = tuple(OUTPUT_FORMATS)
    save_probabilities: bool = False
    reference_dir: str | None = None
    overwrite: bool = False
    executor: str = "local"
    ray_address: str | None = None
    postprocess: PostprocessConfig = field(default_factory=PostprocessConfig)
    mains_hz: float | None = 60.0
    min_recording_s: float = WINDOW_S
    max_unusable_channels: int = DEFAULT_MAX_UNUSABLE_CHANNELS
    # Serve an artifact whose verification failed, never ran, or ran another model (said loudly).
    allow_unverified: bool = False
    window_mode: WindowMode = WindowMode.PER_WINDOW
    # Seconds of EEG the shared front runs on at once (overlap mode): what bounds its memory.
    front_chunk_s: float = 120.0

    def __post_init__(self) -> None:
        samples = self.stride_s * TARGET_RATE
        if not (0 < self.stride_s <= WINDOW_S) or abs(samples - round(samples)) > 1e-6:
            raise InferenceUsageError(
                f"stride {self.stride_s!r} s must be in (0, {WINDOW_S}] and a whole number of samples "
                f"at {TARGET_RATE} Hz"
            )
        if self.batch_size is not None and self.batch_size < 1:
            raise InferenceUsageError(f"batch size must be >= 1, got {self.batch_size}")
        if self.threads is not None and self.threads < 1:
            raise InferenceUsageError(f"threads must be >= 1, got {self.threads}")
        unknown = set(self.formats) - set(OUTPUT_FORMATS)
        if not self.formats or unknown:
            raise InferenceUsageError(
                f"formats must be a non-empty subset of {sorted(OUTPUT_FORMATS)}, got {list(self.formats)}"
            )
        if self.executor not in EXECUTORS:
            raise InferenceUsageError(f"executor must be one of {EXECUTORS}, got {self.executor!r}")
        if self.min_recording_s < 0:
            raise InferenceUsageError(f"min_recording_s must be >= 0, got {self.min_recording_s}")
        if self.max_unusable_channels < 0:
            raise InferenceUsageError(f"max_unusable_channels must be >= 0, got {self.max_unusable_channels}")
        try:
            object.__setattr__(self, "window_mode", WindowMode(self.window_mode))
        except ValueError:
            raise InferenceUsageError(f"window mode must be one of {[m.value for m in WindowMode]}, "
                                      f"got {self.window_mode!r}") from None
        if not self.front_chunk_s * TARGET_RATE >= 1:
            raise InferenceUsageError(f"front chunk must be at least one sample, got {self.front_chunk_s!r} s")
        if self.postprocess.fs != TARGET_RATE:
            raise InferenceUsageError(f"postprocess.fs must be the model rate {TARGET_RATE}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
