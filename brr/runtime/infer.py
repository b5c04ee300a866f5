"""Batch seizure inference over EDF/BDF archives on any engine (the engine of ``brr-infer``).

:func:`run_inference` finds the recordings, runs one :class:`RecordingWorker` call per recording
on an executor (:mod:`brr.runtime.executors`: in this process, or spread over Ray), scores the
events against reference annotations when asked, and writes ``summary.json``.

One recording, in bounded memory whatever its length:

1. :func:`~brr.data.open_recording` streams the preprocessed signal block by block.
2. :func:`model_windows` cuts 60 s windows every ``stride_s``; the last window is aligned to the
   end of the recording (so the model never sees padding) unless the recording is shorter than a
   window, in which case it is zero-padded and the padding masked out.
3. Windows are batched across the recording and run on the engine; sigmoid(logits) of overlapping
   windows are averaged by :class:`~brr.events.probabilities.Stitcher`.
4. :class:`~brr.events.postprocess.SegmentedEventDetector` gives the events of the whole trace without
   holding it; :class:`~brr.events.probabilities.PerSecondProbabilities` bins the trace for
   ``--save-probabilities``.
5. Outputs ``<name>.csv_bi``, ``<name>_events.tsv``, ``<name>_events.json`` (and
   ``<name>_probabilities.npz``) are written atomically, then the done-marker ``<name>.done.json``
   (settings fingerprint, events, SHA-256 of each output) last, also atomically.

Failures: anything raised while reading, checking or running one recording (a broken or unreadable
file, a header pyedflib cannot scale, too many unusable channels, non-finite logits) is that
recording's failure, reported in the summary with its type and message; the batch goes on. Only the
engine itself raising (:class:`EngineFailure`: it gets the same well-formed finite batches for every
recording, so this is no recording's fault) or the output folder failing stops the run.

Data quality: each recording's non-finite, flat and saturated channels (:mod:`brr.data.quality`) are
counted in its entry of ``summary.json`` and in ``<name>_events.json``; a recording with more than
``max_unusable_channels`` unusable channels fails.

The output folder is checked writable before anything runs and locked for the run
(:class:`~brr.output_folder.OutputLock`): a second run on the same folder is refused. Under the lock,
the temporaries that a killed run's atomic writes left are removed first.

Resume (the default): a recording is skipped when its done-marker exists, was made with the same
engine files and settings, and every output it lists still has its recorded hash; otherwise it is
redone. ``overwrite=True`` redoes every recording. An interruption (Ctrl-C, or any exception) while
a recording's outputs are being written removes that recording's outputs, so the output folder
only ever holds complete sets.
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import io
import json
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from scipy.special import expit

from brr.atomic import atomic_write_bytes, atomic_write_text
from brr.data import (
    DataQuality,
    QualityPolicy,
    RecordingStream,
    UnusableRecordingError,
    count_windows,
    iter_windows,
    open_recording,
    recording_files,
)
from brr.data.annotations import (
    SeizureEvent,
    read_csv_bi,
    read_events_tsv,
    write_csv_bi,
    write_events_json,
    write_events_tsv,
)
from brr.data.preprocess import TARGET_RATE
from brr.data.quality import DEFAULT_MAX_UNUSABLE_CHANNELS
from brr.data.recording import RECORDING_SUFFIXES, WINDOW_S
from brr.errors import CheckFailed, UsageError
from brr.output_folder import OutputLock, check_output_folder, prepare_output_folder, remove_stale_temporaries
from brr.runtime.executors import make_executor
from brr.events.postprocess import PostprocessConfig, SegmentedEventDetector
from brr.events.probabilities import PerSecondProbabilities, Stitcher
from brr.events.scoring import aggregate_scores, score_events
from brr.model.detector import INPUT_NAME, OUTPUT_NAME
from brr.model.checkpoint import file_sha256

__all__ = [
    "DONE_SUFFIX",
    "OUTPUT_FORMATS",
    "SUMMARY_FILE",
    "EngineFailure",
    "EngineOutputError",
    "InferenceInterrupted",
    "InferenceSettings",
    "InferenceSummary",
    "InferenceUsageError",
    "ModelWindow",
    "ProgressListener",
    "RecordingEntry",
    "RecordingJob",
    "RecordingWorker",
    "find_recordings",
    "load_engine",
    "model_windows",
    "predict_probabilities",
    "run_inference",
]

OUTPUT_FORMATS = {"csv_bi": ".csv_bi", "tsv": "_events.tsv", "json": "_events.json"}
PROBABILITIES_SUFFIX = "_probabilities.npz"
DONE_SUFFIX = ".done.json"
SUMMARY_FILE = "summary.json"
WINDOW_SAMPLES = WINDOW_S * TARGET_RATE
EXECUTORS = ("local", "ray")


class InferenceUsageError(UsageError):
    """Bad settings, inputs or engine: nothing was run (``brr-infer`` exits 2)."""


class EngineOutputError(CheckFailed):
    """The engine returned logits of the wrong shape or non-finite values for a recording."""


class EngineFailure(CheckFailed):
    """The engine raised while running a batch: the run stops (see the module docstring)."""


class InferenceInterrupted(KeyboardInterrupt):
    """Ctrl-C during :func:`run_inference`; ``summary`` holds what finished (already written)."""

    def __init__(self, summary: InferenceSummary) -> None:
        super().__init__("inference interrupted")
        self.summary = summary


@dataclass(frozen=True)
class InferenceSettings:
    """Everything about a run except the engine, the inputs and the output folder."""

    stride_s: float = 10.0
    batch_size: int = 8
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

    def __post_init__(self) -> None:
        samples = self.stride_s * TARGET_RATE
        if not (0 < self.stride_s <= WINDOW_S) or abs(samples - round(samples)) > 1e-6:
            raise InferenceUsageError(
                f"stride {self.stride_s!r} s must be in (0, {WINDOW_S}] and a whole number of samples "
                f"at {TARGET_RATE} Hz"
            )
        if self.batch_size < 1:
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
        if self.postprocess.fs != TARGET_RATE:
            raise InferenceUsageError(f"postprocess.fs must be the model rate {TARGET_RATE}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class RecordingJob:
    """One input recording: its path, its output name (relative, no suffix) and reference annotation."""

    path: str
    name: str
    reference: str | None = None


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
    # Kept for scoring in the main process; summary.json carries n_events only.
    events: list[SeizureEvent] = field(default_factory=list, repr=False)

    def to_dict(self) -> dict[str, Any]:
        doc = dataclasses.asdict(self)
        del doc["events"]
        return doc


@dataclass
class InferenceSummary:
    engine: str
    out_dir: str
    settings: dict[str, Any]
    entries: list[RecordingEntry] = field(default_factory=list)
    wall_s: float = 0.0
    interrupted: bool = False
    scores: dict[str, Any] | None = None

    def count(self, status: str) -> int:
        return sum(entry.status == status for entry in self.entries)

    @property
    def eeg_hours_processed(self) -> float:
        """Hours of EEG run through the engine in this run (skipped recordings not counted)."""
        return sum(e.duration_s or 0.0 for e in self.entries if e.status == "ok") / 3600.0

    @property
    def eeg_hours_per_minute(self) -> float | None:
        return self.eeg_hours_processed / (self.wall_s / 60.0) if self.wall_s > 0 else None

    @property
    def exit_code(self) -> int:
        """0 when every recording is ok or skipped, 1 when any failed (130 is the CLI's, on Ctrl-C)."""
        return 1 if self.count("failed") else 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "engine": self.engine,
            "out_dir": self.out_dir,
            "settings": self.settings,
            "interrupted": self.interrupted,
            "totals": {
                "recordings": len(self.entries),
                "ok": self.count("ok"),
                "failed": self.count("failed"),
                "skipped": self.count("skipped"),
                "recordings_with_bad_channels": sum(
                    bool(e.data_quality and e.data_quality["channels"]) for e in self.entries),
                "eeg_hours_processed": self.eeg_hours_processed,
                "wall_s": self.wall_s,
                "eeg_hours_per_minute": self.eeg_hours_per_minute,
            },
            "scores": self.scores,
            "recordings": [entry.to_dict() for entry in self.entries],
        }


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


# --------------------------------------------------------------------------- finding recordings


def find_recordings(inputs: Sequence[str | os.PathLike], reference_dir: str | os.PathLike | None = None
                    ) -> list[RecordingJob]:
    """Files (any suffix: a bad one is reported, not dropped), directories (recursive .edf/.bdf) and globs.

    Recordings found under a directory keep their relative path as output name, so equal file names
    in different sub-folders do not collide; a remaining collision is a usage error. A directory entry
    named like a recording that is not a file (a broken link, a pipe) is a job too, so that it is
    reported as failed rather than silently left out; a folder named ``x.edf`` is searched. Jobs keep
    the path as found (links are resolved only to find duplicates). With
    ``reference_dir``, each job gets ``<reference_dir>/<name>.csv_bi`` or ``<name>_events.tsv``
    (relative name first, then the bare file name) when one exists.
    """
    found: dict[Path, tuple[str, Path]] = {}  # resolved path -> (output name, path as found)

    def add(path: Path, name: str) -> None:
        found.setdefault(path.resolve(), (name, path.absolute()))

    def add_tree(root: Path) -> None:
        for path in recording_files(root):
            add(path, path.relative_to(root).with_suffix("").as_posix())

    for item in inputs:
        path = Path(item)
        if path.is_dir():
            add_tree(path)
        elif path.is_file():
            add(path, path.stem)
        elif glob.has_magic(str(item)):
            matches = sorted(Path(m) for m in glob.glob(str(item), recursive=True))
            if not matches:
                raise InferenceUsageError(f"{item}: the pattern matches nothing")
            for match in matches:
                if match.is_dir():
                    add_tree(match)
                elif match.suffix.lower() in RECORDING_SUFFIXES:
                    add(match, match.stem)
        else:
            raise InferenceUsageError(f"{item}: no such file or directory")
    if not found:
        raise InferenceUsageError(f"no .edf/.bdf recordings found in {[os.fspath(i) for i in inputs]}")

    by_name: dict[str, list[Path]] = {}
    for name, path in found.values():
        by_name.setdefault(name, []).append(path)
    clashes = {name: paths for name, paths in by_name.items() if len(paths) > 1}
    if clashes:
        detail = "; ".join(f"{name}: {', '.join(map(str, paths))}" for name, paths in sorted(clashes.items()))
        raise InferenceUsageError(f"recordings with the same output name (pass their folder instead): {detail}")

    if reference_dir is not None and not Path(reference_dir).is_dir():
        raise InferenceUsageError(f"reference folder {reference_dir} does not exist")
    return [
        RecordingJob(str(path), name, _find_reference(reference_dir, name))
        for name, (path,) in sorted(by_name.items())
    ]


def _find_reference(reference_dir: str | os.PathLike | None, name: str) -> str | None:
    if reference_dir is None:
        return None
    for stem in dict.fromkeys((name, Path(name).name)):
        for suffix in (".csv_bi", "_events.tsv"):
            candidate = Path(reference_dir) / f"{stem}{suffix}"
            if candidate.is_file():
                return str(candidate)
    return None


def _read_reference(path: str) -> list[SeizureEvent]:
    return read_csv_bi(path) if path.endswith(".csv_bi") else read_events_tsv(path)


# --------------------------------------------------------------------------- windows and probabilities


@dataclass(frozen=True)
class ModelWindow:
    start_sample: int
    signals: np.ndarray  # float32 (19, WINDOW_SAMPLES)
    valid: np.ndarray  # bool (WINDOW_SAMPLES,): False on zero padding
    new_samples: int  # samples this window adds to the covered prefix of the recording (for throughput)


def model_windows(stream: RecordingStream, stride_s: float) -> Iterator[ModelWindow]:
    """Windows every ``stride_s`` with the last one aligned to the end of the recording.

    :func:`~brr.data.iter_windows` zero-pads the window that reaches the end; here that window is
    replaced by the one ending exactly at the end, built from the previous window's signal (the
    previous window did not reach the end, so the missing head is shorter than one stride and lies
    inside it). Only a recording shorter than one window keeps a padded, masked window.
    """
    n = stream.n_samples
    previous: tuple[int, np.ndarray] | None = None
    covered = 0
    for window in iter_windows(stream, WINDOW_S, stride_s):
        start = round(window.start_s * TARGET_RATE)
        n_valid = int(np.count_nonzero(window.valid))
        if n_valid < WINDOW_SAMPLES and previous is not None:
            previous_start, previous_signals = previous
            head = previous_signals[:, n - WINDOW_SAMPLES - previous_start : start - previous_start]
            signals = np.concatenate([head, window.signals[:, :n_valid]], axis=1)
            yield ModelWindow(n - WINDOW_SAMPLES, signals, np.ones(WINDOW_SAMPLES, dtype=bool), n - covered)
        else:
            stop = start + n_valid
            yield ModelWindow(start, window.signals, window.valid, stop - covered)
            covered = stop
        previous = (start, window.signals)


def predict_probabilities(
    runner: Any,
    stream: RecordingStream,
    stride_s: float,
    batch_size: int,
    on_windows: Callable[[int, float], None] | None = None,
) -> Iterator[np.ndarray]:
    """Consecutive float32 chunks of the stitched per-sample seizure probability (they cover the recording).

    ``runner`` is any activated runner with input ``eeg`` and output ``logits``.
    ``on_windows(n_windows, eeg_seconds)`` is called after each batch.
    """
    # NaN for a sample no window covered: post-processing refuses it instead of calling it background.
    stitcher = Stitcher(stream.n_samples, fill_value=np.nan)
    batch: list[ModelWindow] = []

    def run_batch() -> Iterator[np.ndarray]:
        try:
            logits = np.asarray(runner.infer({INPUT_NAME: np.stack([w.signals for w in batch])})[OUTPUT_NAME])
        except Exception as error:
            raise EngineFailure(
                f"the engine failed on windows at {[w.start_sample / TARGET_RATE for w in batch]} s of "
                f"{stream.path}: {type(error).__name__}: {error}"
            ) from error
        if logits.shape != (len(batch), WINDOW_SAMPLES):
            raise EngineOutputError(
                f"{stream.path}: engine returned logits of shape {logits.shape}, "
                f"expected {(len(batch), WINDOW_SAMPLES)}"
            )
        if not np.isfinite(logits).all():
            bad = [w.start_sample / TARGET_RATE for w, row in zip(batch, logits) if not np.isfinite(row).all()]
            raise EngineOutputError(f"{stream.path}: engine returned non-finite logits in windows at {bad} s")
        probabilities = expit(logits.astype(np.float32))
        for window, row in zip(batch, probabilities):
            yield stitcher.add(window.start_sample, row, window.valid)
        if on_windows is not None:
            on_windows(len(batch), sum(w.new_samples for w in batch) / TARGET_RATE)
        batch.clear()

    for window in model_windows(stream, stride_s):
        batch.append(window)
        if len(batch) == batch_size:
            yield from run_batch()
    if batch:
        yield from run_batch()
    yield stitcher.finish()


# --------------------------------------------------------------------------- engines


def load_engine(engine: str | os.PathLike, threads: int | None = None, device: str = "cpu",
                allow_unverified: bool = False) -> Any:
    """The runner for ``engine``: :func:`brr.artifact.load.load_runner` decides from the artifact
    (a checkpoint directory runs on PyTorch; an exported engine's manifest names its backend and is
    checked, so a mismatched, tampered or unverified artifact is refused here)."""
    from brr.artifact.load import load_runner
    from brr.backends.torch.runner import TorchRunner

    try:
        runner = load_runner(engine, probes=False, threads=threads, device=device,
                             require_verified=not allow_unverified)
    except Exception as error:  # a refused artifact, whatever the backend's error type
        raise InferenceUsageError(f"cannot load engine {engine}: {error}") from error
    if threads is not None and isinstance(runner, TorchRunner):
        # load_runner gives threads to exported engines; PyTorch's thread pool is per process.
        import torch

        torch.set_num_threads(threads)
    return runner


def engine_identity(engine: str | os.PathLike) -> dict[str, Any]:
    """Path, sizes and modification times of the engine's files: a changed engine redoes recordings."""
    path = Path(engine).resolve()
    files = [path] if path.is_file() else sorted(p for p in path.iterdir() if p.is_file())
    return {"path": str(path), "files": {p.name: [p.stat().st_size, p.stat().st_mtime_ns] for p in files}}


# --------------------------------------------------------------------------- one recording


class RecordingWorker:
    """The per-recording function every executor runs: ``worker(job) -> RecordingEntry``.

    Picklable (for Ray): the runner is loaded on first use in the process that calls it.
    """

    def __init__(self, engine: str | os.PathLike, out_dir: str | os.PathLike, settings: InferenceSettings,
                 fingerprint: str) -> None:
        self.engine = str(engine)
        self.out_dir = Path(out_dir)
        self.settings = settings
        self.fingerprint = fingerprint
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
            runner = load_engine(self.engine, self.settings.threads, self.settings.device,
                                 self.settings.allow_unverified)
            runner.activate()
            self._runner = runner
        return self._runner

    def marker_path(self, job: RecordingJob) -> Path:
        return self.out_dir / f"{job.name}{DONE_SUFFIX}"

    def completed(self, job: RecordingJob) -> dict[str, Any] | None:
        """The done-marker of ``job`` when its outputs are complete and current, else None."""
        try:
            marker = json.loads(self.marker_path(job).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        needed = {"fingerprint", "duration_s", "n_windows", "n_events", "events", "outputs"}
        if not isinstance(marker, dict) or not needed <= marker.keys() or marker["fingerprint"] != self.fingerprint:
            return None
        for name, digest in marker.get("outputs", {}).items():
            output = self.out_dir / name
            if not output.is_file() or file_sha256(output) != digest:
                return None
        return marker

    def __call__(self, job: RecordingJob, listener: ProgressListener | None = None) -> RecordingEntry:
        listener = listener or SilentProgress()
        started = time.perf_counter()
        if not self.settings.overwrite:
            marker = self.completed(job)
            if marker is not None:
                entry = RecordingEntry(
                    job.path, job.name, "skipped", marker["duration_s"], marker["n_events"],
                    marker["n_windows"], outputs=sorted(marker["outputs"]), reference=job.reference,
                    data_quality=marker.get("data_quality"),
                    events=[SeizureEvent(**e) for e in marker["events"]],
                )
                listener.recording_finished(entry)
                return entry
        self._discard_previous(job)
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
                duration_s, quality = stream.duration_s, stream.quality
        except EngineFailure:
            raise
        except Exception as error:  # noqa: BLE001  (whatever one file does, it is that file's failure)
            quality = error.quality.to_dict() if isinstance(error, UnusableRecordingError) else None
            entry = RecordingEntry(job.path, job.name, "failed", time_s=time.perf_counter() - started,
                                   error=str(error) or repr(error), error_type=type(error).__name__,
                                   reference=job.reference, data_quality=quality)
        else:
            outputs = self._write_outputs(job, events, duration_s, n_windows, per_second, quality)
            entry = RecordingEntry(job.path, job.name, "ok", duration_s, len(events), n_windows,
                                   time.perf_counter() - started, outputs=outputs, reference=job.reference,
                                   data_quality=quality.to_dict(), events=events)
        listener.recording_finished(entry)
        return entry

    def _discard_previous(self, job: RecordingJob) -> None:
        """Remove a previous run's marker first (it must not vouch for outputs being replaced), then its outputs."""
        marker_path = self.marker_path(job)
        try:
            previous = json.loads(marker_path.read_text(encoding="utf-8")).get("outputs", {})
        except (OSError, ValueError, AttributeError):
            previous = {}
        marker_path.unlink(missing_ok=True)
        root = self.out_dir.resolve()
        for name in previous:
            path = (self.out_dir / name).resolve()
            if root in path.parents:  # a hand-edited marker must not delete files elsewhere
                path.unlink(missing_ok=True)

    def _detect(self, stream: RecordingStream, listener: ProgressListener
                ) -> tuple[list[SeizureEvent], PerSecondProbabilities | None]:
        detector = SegmentedEventDetector(self.settings.postprocess)
        per_second = PerSecondProbabilities() if self.settings.save_probabilities else None
        for chunk in predict_probabilities(self._active_runner(), stream, self.settings.stride_s,
                                           self.settings.batch_size, listener.windows_done):
            detector.add(chunk)
            if per_second is not None:
                per_second.add(chunk)
        return detector.finish(), per_second

    def _write_outputs(self, job: RecordingJob, events: list[SeizureEvent], duration_s: float,
                       n_windows: int, per_second: PerSecondProbabilities | None, quality: DataQuality
                       ) -> list[str]:
        base = self.out_dir / job.name
        bname = Path(job.name).name
        written: list[Path] = []
        try:
            for fmt in self.settings.formats:
                path = base.with_name(bname + OUTPUT_FORMATS[fmt])
                if fmt == "csv_bi":
                    write_csv_bi(path, events, duration_s, bname=bname)
                elif fmt == "tsv":
                    write_events_tsv(path, events, duration_s, recording_name=bname)
                else:
                    write_events_json(path, events, duration_s, bname, extra={
                        "engine": self.engine, "stride_s": self.settings.stride_s,
                        "postprocess": dataclasses.asdict(self.settings.postprocess),
                        "data_quality": quality.to_dict()})
                written.append(path)
            if per_second is not None:
                path = base.with_name(bname + PROBABILITIES_SUFFIX)
                atomic_write_bytes(path, per_second.npz_bytes())
                written.append(path)
            marker = {
                "recording": job.name,
                "input": job.path,
                "fingerprint": self.fingerprint,
                "duration_s": duration_s,
                "n_windows": n_windows,
                "n_events": len(events),
                "data_quality": quality.to_dict(),
                "events": [dataclasses.asdict(e) for e in events],
                "outputs": {p.relative_to(self.out_dir).as_posix(): file_sha256(p) for p in written},
            }
            atomic_write_text(self.marker_path(job), json.dumps(marker, indent=2, allow_nan=False) + "\n")
        except BaseException:
            # Interrupted between files: a recording's outputs exist as a complete set or not at all.
            for path in written:
                path.unlink(missing_ok=True)
            raise
        return [p.relative_to(self.out_dir).as_posix() for p in written]


# --------------------------------------------------------------------------- the run


def settings_fingerprint(engine: str | os.PathLike, settings: InferenceSettings) -> str:
    """What a recording's outputs depend on; a done-marker with another fingerprint is redone."""
    relevant = {
        "engine": engine_identity(engine),
        "device": settings.device,
        "stride_s": settings.stride_s,
        "formats": sorted(settings.formats),
        "save_probabilities": settings.save_probabilities,
        "postprocess": dataclasses.asdict(settings.postprocess),
        "mains_hz": settings.mains_hz,
        "min_recording_s": settings.min_recording_s,
        "max_unusable_channels": settings.max_unusable_channels,
    }
    return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()


def _score(entries: list[RecordingEntry]) -> dict[str, Any] | None:
    per_file = []
    for entry in entries:
        if entry.status == "failed" or entry.reference is None or not entry.duration_s:
            continue
        try:
            reference = _read_reference(entry.reference)
        except (OSError, ValueError) as error:
            entry.scores = {"error": f"cannot read reference {entry.reference}: {error}"}
            continue
        entry.scores = score_events(reference, entry.events, entry.duration_s)
        per_file.append(entry.scores)
    return aggregate_scores(per_file) if per_file else None


def write_summary(summary: InferenceSummary) -> Path:
    return atomic_write_text(Path(summary.out_dir) / SUMMARY_FILE,
                             json.dumps(summary.to_dict(), indent=2, allow_nan=False) + "\n")


def run_inference(
    engine: str | os.PathLike,
    inputs: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    settings: InferenceSettings | None = None,
    listener: ProgressListener | None = None,
) -> InferenceSummary:
    """Detect seizures in every recording of ``inputs`` with ``engine``; write outputs and ``summary.json``.

    Raises :class:`InferenceUsageError` before running anything when the settings, inputs, output
    folder (not writable, or locked by another run) or engine are unusable; :class:`InferenceInterrupted`
    on Ctrl-C, after writing the summary of what finished. Any other exception (:class:`EngineFailure`,
    an output folder that fails mid-run) is also preceded by the summary (marked interrupted).
    """
    settings = settings or InferenceSettings()
    listener = listener or SilentProgress()
    if not Path(engine).exists():
        raise InferenceUsageError(f"engine {engine} does not exist")
    jobs = find_recordings(inputs, settings.reference_dir)
    out_dir = Path(out_dir)
    try:
        check_output_folder(out_dir)
    except UsageError as error:
        raise InferenceUsageError(str(error)) from error
    worker = RecordingWorker(engine, out_dir, settings, settings_fingerprint(engine, settings))
    try:
        executor = make_executor(settings)
    except ImportError as error:
        raise InferenceUsageError(str(error)) from error
    # Refuse a mismatched or tampered engine before anything is written.
    worker.open()
    lock = OutputLock(out_dir, "brr-infer")
    try:
        try:
            prepare_output_folder(out_dir)
            lock.acquire()
        except UsageError as error:
            raise InferenceUsageError(str(error)) from error
        remove_stale_temporaries(out_dir)
        return _run_jobs(worker, executor, jobs, settings, listener)
    finally:
        worker.close()
        lock.release()


def _run_jobs(worker: RecordingWorker, executor: Any, jobs: list[RecordingJob], settings: InferenceSettings,
              listener: ProgressListener) -> InferenceSummary:
    summary = InferenceSummary(worker.engine, str(worker.out_dir), settings.to_dict())
    started = time.perf_counter()
    listener.run_started(len(jobs))
    try:
        for entry in executor.run(worker, jobs, listener):
            summary.entries.append(entry)
    except BaseException as error:
        summary.interrupted = True
        _finish(summary, started)
        if isinstance(error, KeyboardInterrupt) and not isinstance(error, InferenceInterrupted):
            raise InferenceInterrupted(summary) from error
        raise
    _finish(summary, started)
    return summary


def _finish(summary: InferenceSummary, started: float) -> None:
    summary.entries.sort(key=lambda e: e.name)
    summary.wall_s = time.perf_counter() - started
    summary.scores = _score(summary.entries)
    write_summary(summary)
