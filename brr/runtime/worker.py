"""One recording, start to finish: the function every executor runs (``RecordingWorker``).

The recording is streamed (:func:`~brr.data.open_recording`), run through the engine
(:mod:`brr.runtime.windows`: window by window, or with the windows sharing the detector's front, as the
settings' ``window_mode`` says), turned into events without holding its trace
(:class:`~brr.events.postprocess.SegmentedEventDetector`), and written (:mod:`brr.runtime.outputs`).
Anything raised while reading, checking or running one recording (a broken or unreadable file, a
header pyedflib cannot scale, too many unusable channels, non-finite logits) is that recording's
failure, returned in its entry with its type and message. Only the engine itself raising
(:class:`~brr.runtime.windows.EngineFailure`: it gets the same well-formed finite batches for every
recording, so this is no recording's fault) stops the run. A run that is stopped while a recording
runs in another process (its ``stop_file`` appears) abandons that recording: nothing of it is written.
"""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from brr.artifact.files import MANIFEST_FILE
from brr.artifact.load import load_runner, load_split_runners
from brr.artifact.manifest import ManifestError, read_manifest, served_split
from brr.backends import BACKENDS
from brr.backends.split import SplitRunners
from brr.data import QualityPolicy, RecordingStream, UnusableRecordingError, count_windows, open_recording
from brr.data.annotations import SeizureEvent
from brr.data.preprocess import TARGET_RATE
from brr.events.postprocess import SegmentedEventDetector
from brr.events.probabilities import PerSecondProbabilities
from brr.runtime.discovery import RecordingJob
from brr.runtime.outputs import RecordingOutputs, settings_fingerprint
from brr.runtime.settings import InferenceSettings, InferenceUsageError, WindowMode
from brr.runtime.windows import (
    WINDOW_SAMPLES,
    EngineFailure,
    predict_probabilities,
    predict_probabilities_overlap,
)


@dataclass
class RecordingEntry:
    """One line of the run summary. ``status`` is ``ok``, ``failed`` or ``skipped`` (already done)."""

    input: str
    name: str
    status: str
    duration_s: float | None = None
    n_events: int | None = None
    n_windows: int | None = None
    time_s: float = 0.0
    error: str | None = None
    error_type: str | None = None
    outputs: list[str] = field(default_factory=list)
    reference: str | None = None
    scores: dict[str, Any] | None = None
    # Non-finite, flat and saturated channels (DataQuality.to_dict()), when the recording was read.
    data_quality: dict[str, Any] | None = None
    # Times the recording was started: more than one when a Ray worker or node was lost running it.
    attempts: int = 1
    # Kept for scoring in the main process; summary.json carries n_events only.
    events: list[SeizureEvent] = field(default_factory=list, repr=False)

    def to_dict(self) -> dict[str, Any]:
        doc = dataclasses.asdict(self)
        del doc["events"]
        return doc


class RecordingStopped(Exception):
    """The run was stopped while this recording ran (``RecordingWorker.stop_file`` appeared): it is abandoned,
    nothing of it written."""


class ProgressListener(Protocol):
    """What a progress display is told; :func:`run_inference` calls it from the main process."""

    def run_started(self, n_recordings: int) -> None: ...
    def recording_started(self, name: str, n_windows: int) -> None: ...
    def windows_done(self, n_windows: int, eeg_seconds: float) -> None: ...
    def recording_finished(self, entry: RecordingEntry) -> None: ...


class SilentProgress:
    def run_started(self, n_recordings: int) -> None:
        pass

    def recording_started(self, name: str, n_windows: int) -> None:
        pass

    def windows_done(self, n_windows: int, eeg_seconds: float) -> None:
        pass

    def recording_finished(self, entry: RecordingEntry) -> None:
        pass


def load_engine(engine: str | os.PathLike, threads: int | None = None, device: str = "cpu",
                allow_unverified: bool = False) -> Any:
    """The runner for ``engine``: :func:`brr.artifact.load.load_runner` decides from the artifact
    (a checkpoint directory runs on PyTorch; an exported engine's manifest names its backend and is
    checked, so a mismatched, tampered or unverified artifact is refused here)."""
    try:
        runner = load_runner(engine, probes=False, threads=threads, device=device,
                             require_verified=not allow_unverified)
    except Exception as error:  # a refused artifact, whatever the backend's error type
        raise InferenceUsageError(f"cannot load engine {engine}: {error}") from error
    return runner


def load_split_engine(engine: str | os.PathLike, stride_s: float, threads: int | None = None, device: str = "cpu",
                      allow_unverified: bool = False) -> SplitRunners:
    """The front and rest runners of ``engine`` for overlap inference (a checkpoint, or an artifact holding the
    two graphs, checked as ``load_engine`` checks one model), with the stride checked against the front."""
    try:
        split = load_split_runners(engine, threads=threads, device=device, require_verified=not allow_unverified)
    except Exception as error:  # a refused artifact, whatever the backend's error type
        raise InferenceUsageError(f"cannot load engine {engine} for overlap inference: {error}") from error
    step = split.geometry.downsample
    if round(stride_s * TARGET_RATE) % step:
        raise InferenceUsageError(f"overlap inference needs a stride of whole {step}-sample steps of the "
                                  f"detector's front ({step / TARGET_RATE:g} s); {stride_s:g} s is not: pick "
                                  "another stride or --window-mode per-window")
    return split


def auto_window_mode(engine: str | os.PathLike, stride_s: float) -> tuple[WindowMode, str]:
    """What ``--window-mode auto`` runs on ``engine`` at ``stride_s``, and why: overlap where the engine is an
    export's whose front and rest passed their verification and windows share samples in whole steps of its
    front; else per-window (a checkpoint too: its overlap is asked for by name)."""
    path = Path(engine)
    directory = path if path.is_dir() else path.parent
    if not (directory / MANIFEST_FILE).is_file():
        return WindowMode.PER_WINDOW, "a checkpoint runs each window whole unless --window-mode overlap"
    try:
        _, geometry = served_split(directory, read_manifest(directory))
    except ManifestError as refusal:
        return WindowMode.PER_WINDOW, str(refusal)
    stride = round(stride_s * TARGET_RATE)
    if stride >= geometry.window:
        return WindowMode.PER_WINDOW, f"windows {stride_s:g} s apart share no samples"
    if stride % geometry.downsample:
        return WindowMode.PER_WINDOW, (f"a {stride_s:g} s stride is not a whole number of the front's "
                                       f"{geometry.downsample}-sample steps")
    return WindowMode.OVERLAP, "its front and rest passed their verification: the front runs once per recording"


# Windows per call on a GPU when the engine names no batch: enough to keep its kernels busy.
GPU_BATCH = 8


def default_batch(engine: str | os.PathLike, device: str) -> int:
    """Windows per engine call when none is asked for: the optimum of a TensorRT engine's batch profile;
    8 on a GPU; 1 on a CPU, where one window already keeps the cores busy (the edge stream alone runs
    171 sequences) and each further window only adds its activations (about 0.36 GB a window for a
    v3-small standard-ops ONNX Runtime engine: 0.85 GB peak RSS at batch 1, 3.4 GB at 8, no faster)."""
    directory = Path(engine) if Path(engine).is_dir() else Path(engine).parent  # a folder or its model file
    if (directory / MANIFEST_FILE).is_file():
        manifest = read_manifest(directory)
        if BACKENDS[manifest["backend"]].batch_profile and manifest.get("batch"):
            return int(manifest["batch"]["opt"])
    return GPU_BATCH if device.startswith("cuda") else 1


class RecordingWorker:
    """The per-recording function every executor runs: ``worker(job) -> RecordingEntry``.

    Picklable (for Ray): the runner is loaded on first use in the process that calls it. ``stop_file``: a
    file whose appearance (looked for before the recording and after each engine call) abandons the
    recording with :class:`RecordingStopped`; how a driver stops workers in other processes or machines.
    """

    def __init__(self, engine: str | os.PathLike, out_dir: str | os.PathLike, settings: InferenceSettings,
                 stop_file: str | os.PathLike | None = None) -> None:
        self.engine = str(engine)
        self.out_dir = Path(out_dir)
        self.settings = settings
        self.stop_file = None if stop_file is None else Path(stop_file)
        self.batch_size = settings.batch_size or default_batch(engine, settings.device)
        self.outputs = RecordingOutputs(out_dir, settings_fingerprint(engine, settings))
        self._runner: Any = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_runner": None}

    def close(self) -> None:
        if self._runner is not None:
            self._runner.deactivate()
            self._runner = None

    def open(self) -> None:
        """Load and activate the engine in this process (raises :class:`InferenceUsageError` if refused)."""
        try:
            self._active_runner()
        except InferenceUsageError:
            raise
        except Exception as error:  # e.g. a checkpoint whose config or weights do not check out
            raise InferenceUsageError(f"cannot load engine {self.engine}: {error}") from error

    def _active_runner(self) -> Any:
        if self._runner is None:
            settings = self.settings
            if settings.window_mode is WindowMode.OVERLAP:
                runner = load_split_engine(self.engine, settings.stride_s, settings.threads, settings.device,
                                           settings.allow_unverified)
            else:
                runner = load_engine(self.engine, settings.threads, settings.device, settings.allow_unverified)
            runner.activate()
            self._runner = runner
        return self._runner

    def _check_stop(self) -> None:
        if self.stop_file is not None and self.stop_file.exists():
            raise RecordingStopped(f"the run was stopped ({self.stop_file} exists)")

    def __call__(self, job: RecordingJob, listener: ProgressListener | None = None) -> RecordingEntry:
        listener = listener or SilentProgress()
        started = time.perf_counter()
        self._check_stop()
        if not self.settings.overwrite:
            marker = self.outputs.completed(job)
            if marker is not None:
                entry = RecordingEntry(
                    job.path, job.name, "skipped", marker["duration_s"], marker["n_events"],
                    marker["n_windows"], outputs=sorted(marker["outputs"]), reference=job.reference,
                    data_quality=marker.get("data_quality"),
                    events=[SeizureEvent(**e) for e in marker["events"]],
                )
                listener.recording_finished(entry)
                return entry
        self.outputs.discard_previous(job)
        # An engine that cannot load (here in a Ray task) is no recording's failure: it stops the run.
        self.open()
        try:
            with open_recording(job.path, mains_hz=self.settings.mains_hz,
                                min_duration_s=self.settings.min_recording_s,
                                quality=QualityPolicy(self.settings.max_unusable_channels)) as stream:
                n_windows = count_windows(stream.n_samples, WINDOW_SAMPLES,
                                          round(self.settings.stride_s * TARGET_RATE))
                listener.recording_started(job.name, n_windows)
                events, per_second = self._detect(stream, listener)
                duration_s, quality, start = stream.duration_s, stream.quality, stream.start_datetime
        except (EngineFailure, RecordingStopped):
            raise
        except Exception as error:  # noqa: BLE001  (whatever one file does, it is that file's failure)
            quality = error.quality.to_dict() if isinstance(error, UnusableRecordingError) else None
            entry = RecordingEntry(job.path, job.name, "failed", time_s=time.perf_counter() - started,
                                   error=str(error) or repr(error), error_type=type(error).__name__,
                                   reference=job.reference, data_quality=quality)
        else:
            outputs = self.outputs.write(job, self.settings.formats, events, duration_s, n_windows, per_second, quality,
                                         {"engine": self.engine, "stride_s": self.settings.stride_s,
                                          "window_mode": self.settings.window_mode,
                                          "postprocess": dataclasses.asdict(self.settings.postprocess)},
                                         start=start)
            entry = RecordingEntry(job.path, job.name, "ok", duration_s, len(events), n_windows,
                                   time.perf_counter() - started, outputs=outputs, reference=job.reference,
                                   data_quality=quality.to_dict(), events=events)
        listener.recording_finished(entry)
        return entry

    def _detect(self, stream: RecordingStream, listener: ProgressListener
                ) -> tuple[list[SeizureEvent], PerSecondProbabilities | None]:
        detector = SegmentedEventDetector(self.settings.postprocess)
        per_second = PerSecondProbabilities() if self.settings.save_probabilities else None
        settings = self.settings
        if settings.window_mode is WindowMode.OVERLAP:
            chunks = predict_probabilities_overlap(self._active_runner(), stream, settings.stride_s, self.batch_size,
                                                   round(settings.front_chunk_s * TARGET_RATE), listener.windows_done)
        else:
            chunks = predict_probabilities(self._active_runner(), stream, settings.stride_s, self.batch_size,
                                           listener.windows_done)
        for chunk in chunks:
            self._check_stop()
            detector.add(chunk)
            if per_second is not None:
                per_second.add(chunk)
        return detector.finish(), per_second
