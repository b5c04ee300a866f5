"""Batch seizure inference over EDF/BDF archives on any engine: what ``brr-infer`` runs.

:func:`run_inference` finds the recordings (:mod:`brr.runtime.discovery`), runs one
:class:`~brr.runtime.worker.RecordingWorker` call per recording on an executor
(:mod:`brr.runtime.executors`: in this process, or spread over Ray), scores the events against
reference annotations when asked, and writes ``summary.json``. A recording that fails is reported in
the summary and the batch goes on; the engine raising or the output folder failing stops the run,
after the summary of what finished is written.

The output folder is checked writable before anything runs and locked for the run
(:class:`~brr.output_folder.OutputLock`): a second run on the same folder is refused. Under the lock,
the temporaries that a killed run's atomic writes left are removed first. Recordings done by an
earlier run with the same engine and settings are skipped (:mod:`brr.runtime.outputs`) unless
``overwrite``.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from brr.atomic import atomic_write_text
from brr.errors import UsageError
from brr.events.scoring import aggregate_scores, score_events
from brr.output_folder import OutputLock, check_output_folder, prepare_output_folder, remove_stale_temporaries
from brr.runtime.discovery import RecordingJob, find_recordings, read_reference
from brr.runtime.executors import make_executor
from brr.runtime.settings import InferenceSettings, InferenceUsageError
from brr.runtime.worker import ProgressListener, RecordingEntry, RecordingWorker, SilentProgress

SUMMARY_FILE = "summary.json"


class InferenceInterrupted(KeyboardInterrupt):
    """Ctrl-C during :func:`run_inference`; ``summary`` holds what finished (already written)."""

    def __init__(self, summary: InferenceSummary) -> None:
        super().__init__("inference interrupted")
        self.summary = summary


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


def _score(entries: list[RecordingEntry]) -> dict[str, Any] | None:
    per_file = []
    for entry in entries:
        if entry.status == "failed" or entry.reference is None or not entry.duration_s:
            continue
        try:
            reference = read_reference(entry.reference)
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
    folder (not writable, or locked by another run), engine or Ray nodes (one that cannot read the
    engine or inputs or write the output folder) are unusable; :class:`InferenceInterrupted`
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
    worker = RecordingWorker(engine, out_dir, settings)
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
        executor.open(worker, jobs)
        return _run_jobs(worker, executor, jobs, settings, listener)
    finally:
        executor.close()
        worker.close()
        lock.release()


def _run_jobs(worker: RecordingWorker, executor: Any, jobs: list[RecordingJob], settings: InferenceSettings,
              listener: ProgressListener) -> InferenceSummary:
    summary = InferenceSummary(worker.engine, str(worker.out_dir), settings.to_dict())
    started = time.perf_counter()
    listener.run_started(len(jobs))
    entries = executor.run(worker, jobs, listener)
    try:
        for entry in entries:
            summary.entries.append(entry)
    except BaseException as error:
        entries.close()  # now, not when the traceback is freed: a Ray executor stops its running tasks
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
