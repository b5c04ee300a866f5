"""A recording's files in the output folder: its outputs, then its done-marker, and what resuming checks.

``<name>`` is the job's output name (:mod:`brr.runtime.discovery`): the recording's path relative to
the folder it was found in, without suffix, and for a BIDS ``<entities>_eeg`` recording without the
``_eeg`` suffix, so that ``sub-01/ses-01/eeg/sub-01_ses-01_task-szMonitoring_run-00_eeg.edf`` gives
``sub-01/ses-01/eeg/sub-01_ses-01_task-szMonitoring_run-00_events.tsv``, the path SzCORE's scorer
reads (sub-folders are created as needed).

Outputs ``<name>.csv_bi``, ``<name>_events.tsv`` (its ``dateTime`` column the recording start from
the EDF header, ``n/a`` when the header has none), ``<name>_events.json`` (and
``<name>_probabilities.npz``) are written atomically, then the done-marker ``<name>.done.json``
(settings fingerprint, events, SHA-256 of each output), last, also atomically. An interruption
(Ctrl-C, or any exception) while they are written removes the recording's outputs, so the folder
only ever holds complete sets.

Resume: a recording is skipped when its done-marker exists, was made with the same engine files and
settings (``settings_fingerprint``), and every output it lists still has its recorded hash.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import os
from pathlib import Path
from typing import Any

from brr.atomic import atomic_write_bytes, atomic_write_text
from brr.data import DataQuality
from brr.data.annotations import SeizureEvent, write_csv_bi, write_events_json, write_events_tsv
from brr.events.probabilities import PerSecondProbabilities
from brr.model.checkpoint import file_sha256
from brr.runtime.discovery import RecordingJob
from brr.runtime.settings import OUTPUT_FORMATS, InferenceSettings

PROBABILITIES_SUFFIX = "_probabilities.npz"
DONE_SUFFIX = ".done.json"
MARKER_KEYS = {"fingerprint", "duration_s", "n_windows", "n_events", "events", "outputs"}


def engine_identity(engine: str | os.PathLike) -> dict[str, Any]:
    """Path, sizes and modification times of the engine's files: a changed engine redoes recordings."""
    path = Path(engine).resolve()
    files = [path] if path.is_file() else sorted(p for p in path.iterdir() if p.is_file())
    return {"path": str(path), "files": {p.name: [p.stat().st_size, p.stat().st_mtime_ns] for p in files}}


def settings_fingerprint(engine: str | os.PathLike, settings: InferenceSettings) -> str:
    """What a recording's outputs depend on; a done-marker with another fingerprint is redone."""
    relevant = {
        "engine": engine_identity(engine),
        "device": settings.device,
        "stride_s": settings.stride_s,
        "window_mode": settings.window_mode,
        "formats": sorted(settings.formats),
        "save_probabilities": settings.save_probabilities,
        "postprocess": dataclasses.asdict(settings.postprocess),
        "mains_hz": settings.mains_hz,
        "min_recording_s": settings.min_recording_s,
        "max_unusable_channels": settings.max_unusable_channels,
    }
    return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()


class RecordingOutputs:
    """The outputs and done-markers of recordings in ``out_dir``, made with settings of ``fingerprint``."""

    def __init__(self, out_dir: str | os.PathLike, fingerprint: str) -> None:
        self.out_dir = Path(out_dir)
        self.fingerprint = fingerprint

    def marker_path(self, job: RecordingJob) -> Path:
        return self.out_dir / f"{job.name}{DONE_SUFFIX}"

    def completed(self, job: RecordingJob) -> dict[str, Any] | None:
        """The done-marker of ``job`` when its outputs are complete and current, else None."""
        try:
            marker = json.loads(self.marker_path(job).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if not isinstance(marker, dict) or not MARKER_KEYS <= marker.keys() or marker["fingerprint"] != self.fingerprint:
            return None
        for name, digest in marker.get("outputs", {}).items():
            output = self.out_dir / name
            if not output.is_file() or file_sha256(output) != digest:
                return None
        return marker

    def discard_previous(self, job: RecordingJob) -> None:
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

    def write(self, job: RecordingJob, formats: tuple[str, ...], events: list[SeizureEvent], duration_s: float,
              n_windows: int, per_second: PerSecondProbabilities | None, quality: DataQuality,
              details: dict[str, Any], start: datetime.datetime | None = None) -> list[str]:
        """Write the outputs in ``formats`` (the JSON carries ``details`` and the data quality; the TSV's
        ``dateTime`` is ``start``, the recording start, ``n/a`` when None) and the probabilities when given,
        then the marker; returns the outputs, relative to ``out_dir``."""
        base = self.out_dir / job.name
        bname = Path(job.name).name
        written: list[Path] = []
        try:
            for fmt in formats:
                path = base.with_name(bname + OUTPUT_FORMATS[fmt])
                if fmt == "csv_bi":
                    write_csv_bi(path, events, duration_s, bname=bname)
                elif fmt == "tsv":
                    write_events_tsv(path, events, duration_s, recording_name=bname, date_time=start)
                else:
                    write_events_json(path, events, duration_s, bname,
                                      extra={**details, "data_quality": quality.to_dict()})
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
