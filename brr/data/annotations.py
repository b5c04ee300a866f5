"""Seizure event annotations: the event type and the file formats people use.

Formats:
- TUH ``csv_bi`` (term-level seizure/background annotations of the TUSZ corpus).
- SzCORE / BIDS ``*_events.tsv`` (the format ``timescoring`` / ``szcore-evaluation``
  score): columns onset, duration, eventType, confidence, channels, dateTime (the
  recording start, "YYYY-MM-DD HH:MM:SS", or ``n/a``), recordingDuration; a recording
  without seizures gets one ``bckg`` row spanning it.
- A plain JSON document for programs.

Times are seconds from the start of the recording. Text formats carry 4 decimals;
readers round to 4 decimals so that write -> read round-trips exactly.
All writers are atomic (see :mod:`brr.atomic`).
"""

from __future__ import annotations

import csv
import datetime
import io
import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from brr.atomic import atomic_write_text

__all__ = [
    "SEIZURE_LABELS",
    "SeizureEvent",
    "events_to_labels",
    "labels_to_events",
    "read_csv_bi",
    "read_csv_bi_with_duration",
    "read_events_json",
    "read_events_tsv",
    "read_events_tsv_with_duration",
    "write_csv_bi",
    "write_events_json",
    "write_events_tsv",
]

# TUSZ seizure labels; every one of them counts as "seizure" for term-level detection.
SEIZURE_LABELS = frozenset(
    {"seiz", "fnsz", "gnsz", "spsz", "cpsz", "absz", "tnsz", "cnsz", "tcsz", "atsz", "mysz"}
)
BACKGROUND_LABEL = "bckg"
TERM_CHANNEL = "TERM"
CSV_BI_VERSION = "csv_v1.0.0"
CSV_BI_COLUMNS = ("channel", "start_time", "stop_time", "label", "confidence")
TSV_COLUMNS = ("onset", "duration", "eventType", "confidence", "channels", "dateTime", "recordingDuration")
TSV_SEIZURE = "sz"
NA = "n/a"
TSV_DATETIME_FORMAT = "%Y-%m-%d %H:%M:%S"
DECIMALS = 4


@dataclass(frozen=True)
class SeizureEvent:
    """One seizure, ``[start_s, stop_s)`` in seconds from the recording start."""

    start_s: float
    stop_s: float
    label: str = "seiz"
    confidence: float = 1.0
    channel: str = TERM_CHANNEL

    def __post_init__(self) -> None:
        start, stop = float(self.start_s), float(self.stop_s)
        if not (math.isfinite(start) and math.isfinite(stop)):
            raise ValueError(f"event times must be finite, got {start!r}..{stop!r}")
        if start < 0:
            raise ValueError(f"event start must be >= 0, got {start}")
        if stop <= start:
            raise ValueError(f"event stop must be > start, got start={start} stop={stop}")
        conf = float(self.confidence)
        if not (0.0 <= conf <= 1.0):
            raise ValueError(f"confidence must be in [0, 1], got {conf}")
        if not self.label or not self.channel:
            raise ValueError("label and channel must be non-empty")
        # Normalise numeric types (numpy scalars, ints) so equality is plain float equality.
        object.__setattr__(self, "start_s", start)
        object.__setattr__(self, "stop_s", stop)
        object.__setattr__(self, "confidence", conf)

    @property
    def duration_s(self) -> float:
        return self.stop_s - self.start_s


def _sorted(events: Iterable[SeizureEvent]) -> list[SeizureEvent]:
    return sorted(events, key=lambda e: (e.start_s, e.stop_s))


def _fmt(x: float) -> str:
    return f"{x:.{DECIMALS}f}"


def _r(x: float) -> float:
    return round(float(x), DECIMALS)


# --------------------------------------------------------------------------- csv_bi


def write_csv_bi(
    path: str | os.PathLike,
    events: Iterable[SeizureEvent],
    duration_s: float,
    bname: str | None = None,
    montage_file: str = "nedc_eas_default_montage.txt",
) -> Path:
    """Write term-level events as a TUH ``csv_bi`` file.

    ``bname`` defaults to the file name without extension. Every event is written
    as a ``TERM`` row; its label is kept when it is a TUSZ seizure label (e.g.
    ``fnsz``) and written as ``seiz`` otherwise (e.g. SzCORE ``sz``).
    """
    path = Path(path)
    if bname is None:
        bname = path.stem
    lines = [
        f"# version = {CSV_BI_VERSION}",
        f"# bname = {bname}",
        f"# duration = {_fmt(duration_s)} secs",
        f"# montage_file = {montage_file}",
        "#",
        ",".join(CSV_BI_COLUMNS),
    ]
    for ev in _sorted(events):
        label = ev.label if ev.label in SEIZURE_LABELS else "seiz"
        lines.append(f"{TERM_CHANNEL},{_fmt(ev.start_s)},{_fmt(ev.stop_s)},{label},{_fmt(ev.confidence)}")
    return atomic_write_text(path, "\n".join(lines) + "\n")


def read_csv_bi_with_duration(path: str | os.PathLike) -> tuple[list[SeizureEvent], float | None]:
    """Read a ``csv_bi`` file; return (term-level seizure events, header duration or None).

    - ``bckg`` rows are ignored; every label in :data:`SEIZURE_LABELS` is a seizure.
    - If the file has ``TERM`` rows they are used as is. Otherwise (TUH per-channel
      files) the per-channel seizure rows are merged: overlapping or touching
      intervals across channels become one term event whose confidence is the
      maximum of its rows and whose label is the common label, else ``seiz``.
    """
    text = Path(path).read_text(encoding="utf-8")
    duration: float | None = None
    header: list[str] | None = None
    rows: list[tuple[str, float, float, str, float]] = []
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line:
            continue
        if line.startswith("#"):
            key, sep, value = line[1:].partition("=")
            if sep and key.strip() == "duration":
                duration = float(value.strip().split()[0])
            continue
        fields = [f.strip() for f in line.split(",")]
        if header is None:
            header = [f.lower() for f in fields]
            missing = set(CSV_BI_COLUMNS[:4]) - set(header)
            if missing:
                raise ValueError(f"{path}:{lineno}: csv_bi header lacks columns {sorted(missing)}")
            continue
        rec = dict(zip(header, fields))
        label = rec["label"].lower()
        if label == BACKGROUND_LABEL:
            continue
        if label not in SEIZURE_LABELS:
            raise ValueError(f"{path}:{lineno}: unknown csv_bi label {rec['label']!r}")
        conf = float(rec["confidence"]) if rec.get("confidence") not in (None, "") else 1.0
        rows.append((rec["channel"], _r(rec["start_time"]), _r(rec["stop_time"]), label, conf))

    term_rows = [r for r in rows if r[0].upper() == TERM_CHANNEL]
    if term_rows:
        events = [SeizureEvent(s, e, lab, c) for _, s, e, lab, c in term_rows]
    else:
        events = _merge_channel_rows(rows)
    return _sorted(events), duration


def read_csv_bi(path: str | os.PathLike) -> list[SeizureEvent]:
    """Term-level seizure events of a ``csv_bi`` file (see :func:`read_csv_bi_with_duration`)."""
    return read_csv_bi_with_duration(path)[0]


def _merge_channel_rows(rows: Sequence[tuple[str, float, float, str, float]]) -> list[SeizureEvent]:
    merged: list[list[Any]] = []  # [start, stop, labels set, max confidence]
    for _, start, stop, label, conf in sorted(rows, key=lambda r: (r[1], r[2])):
        if merged and start <= merged[-1][1]:
            cur = merged[-1]
            cur[1] = max(cur[1], stop)
            cur[2].add(label)
            cur[3] = max(cur[3], conf)
        else:
            merged.append([start, stop, {label}, conf])
    return [
        SeizureEvent(s, e, next(iter(labs)) if len(labs) == 1 else "seiz", c)
        for s, e, labs, c in merged
    ]


# --------------------------------------------------------------------------- SzCORE TSV


def write_events_tsv(
    path: str | os.PathLike,
    events: Iterable[SeizureEvent],
    duration_s: float,
    recording_name: str,
    date_time: str | datetime.datetime | None = NA,
) -> Path:
    """Write a SzCORE / BIDS events TSV.

    One ``sz`` row per event; a recording without events gets a single ``bckg``
    row covering the whole recording, as SzCORE does. The format has no column for
    ``recording_name``; it is required (non-empty) so that callers keep the TSV
    tied to a recording the same way as :func:`write_events_json`.
    ``date_time`` is the recording start when known: a ``datetime`` (written
    "YYYY-MM-DD HH:MM:SS", whole seconds) or that text; None (or ``n/a``) when not.
    Durations are written as rounded stop minus rounded start, so that
    ``onset + duration`` reads back as the rounded stop exactly.
    """
    if not recording_name:
        raise ValueError("recording_name must be non-empty")
    if date_time is None:
        date_time = NA
    elif isinstance(date_time, datetime.datetime):
        date_time = date_time.strftime(TSV_DATETIME_FORMAT)
    events = _sorted(events)
    buf = io.StringIO()
    writer = csv.writer(buf, delimiter="\t", lineterminator="\n")
    writer.writerow(TSV_COLUMNS)
    if not events:
        writer.writerow([_fmt(0.0), _fmt(duration_s), BACKGROUND_LABEL, NA, NA, date_time, _fmt(duration_s)])
    for ev in events:
        duration = _r(ev.stop_s) - _r(ev.start_s)
        row = [_fmt(ev.start_s), _fmt(duration), TSV_SEIZURE, _fmt(ev.confidence), NA, date_time]
        writer.writerow(row + [_fmt(duration_s)])
    return atomic_write_text(path, buf.getvalue())


def read_events_tsv_with_duration(path: str | os.PathLike) -> tuple[list[SeizureEvent], float | None]:
    """Read a SzCORE / BIDS events TSV; return (seizure events, recordingDuration or None).

    Rows whose eventType is ``sz`` or starts with ``sz_`` (SzCORE's ILAE subtypes)
    are seizures, ``bckg`` rows are skipped. ``sz`` reads as label ``seiz`` (the
    package's term label, so TSV round-trips are exact); subtypes keep their name.
    ``confidence`` ``n/a`` reads as 1.0.
    """
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh, delimiter="\t")
        missing = {"onset", "duration", "eventType"} - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"{path}: events TSV lacks columns {sorted(missing)}")
        events: list[SeizureEvent] = []
        duration: float | None = None
        for row in reader:
            rec_dur = row.get("recordingDuration")
            if rec_dur not in (None, "", NA):
                duration = float(rec_dur)
            etype = row["eventType"].strip()
            if etype == BACKGROUND_LABEL:
                continue
            if not (etype == TSV_SEIZURE or etype.startswith(TSV_SEIZURE + "_")):
                raise ValueError(f"{path}: unknown eventType {etype!r}")
            onset = float(row["onset"])
            conf_s = (row.get("confidence") or NA).strip()
            conf = 1.0 if conf_s in ("", NA) else float(conf_s)
            channels = (row.get("channels") or NA).strip()
            events.append(
                SeizureEvent(
                    _r(onset),
                    _r(onset + float(row["duration"])),
                    label="seiz" if etype == TSV_SEIZURE else etype,
                    confidence=conf,
                    channel=TERM_CHANNEL if channels in ("", NA) else channels,
                )
            )
    return _sorted(events), duration


def read_events_tsv(path: str | os.PathLike) -> list[SeizureEvent]:
    """Seizure events of a SzCORE / BIDS events TSV."""
    return read_events_tsv_with_duration(path)[0]


# --------------------------------------------------------------------------- JSON


def write_events_json(
    path: str | os.PathLike,
    events: Iterable[SeizureEvent],
    duration_s: float,
    recording_name: str,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write ``{"recording", "duration_s", "n_events", "events": [...], **extra}``.

    Each event carries start_s, stop_s, duration_s, label, confidence, channel.
    ``extra`` (model name, thresholds, ...) is merged at top level and may not
    shadow the fixed keys.
    """
    events = _sorted(events)
    doc: dict[str, Any] = {
        "recording": recording_name,
        "duration_s": float(duration_s),
        "n_events": len(events),
        "events": [{**asdict(ev), "duration_s": ev.duration_s} for ev in events],
    }
    if extra:
        clash = set(doc) & set(extra)
        if clash:
            raise ValueError(f"extra keys shadow fixed keys: {sorted(clash)}")
        doc.update(extra)
    return atomic_write_text(path, json.dumps(doc, indent=2, allow_nan=False) + "\n")


def read_events_json(path: str | os.PathLike) -> list[SeizureEvent]:
    """Events of a file written by :func:`write_events_json`."""
    doc = json.loads(Path(path).read_text(encoding="utf-8"))
    return [
        SeizureEvent(e["start_s"], e["stop_s"], e["label"], e["confidence"], e["channel"])
        for e in doc["events"]
    ]


# --------------------------------------------------------------------------- sample labels


def events_to_labels(events: Iterable[SeizureEvent], n_samples: int, fs: float = 256) -> np.ndarray:
    """Per-sample 0/1 labels (uint8, length ``n_samples``).

    Sample i (time i/fs) is 1 when it lies in ``[round(start*fs), round(stop*fs))``;
    events are clipped to the recording.
    """
    labels = np.zeros(int(n_samples), dtype=np.uint8)
    for ev in events:
        a = min(max(int(round(ev.start_s * fs)), 0), n_samples)
        b = min(max(int(round(ev.stop_s * fs)), 0), n_samples)
        labels[a:b] = 1
    return labels


def labels_to_events(
    labels: np.ndarray,
    fs: float = 256,
    probabilities: np.ndarray | None = None,
    label: str = "seiz",
) -> list[SeizureEvent]:
    """Runs of non-zero labels -> events ``[i/fs, j/fs)``.

    With ``probabilities`` (same length), an event's confidence is the mean
    probability over its samples; otherwise 1.0. Inverse of :func:`events_to_labels`
    for events on the sample grid.
    """
    mask = np.asarray(labels).astype(bool).ravel()
    if probabilities is not None and len(probabilities) != len(mask):
        raise ValueError("probabilities and labels differ in length")
    padded = np.concatenate(([False], mask, [False]))
    edges = np.flatnonzero(padded[1:] != padded[:-1])
    events = []
    for a, b in zip(edges[0::2], edges[1::2]):
        conf = 1.0
        if probabilities is not None:
            conf = float(np.clip(np.mean(probabilities[a:b], dtype=np.float64), 0.0, 1.0))
        events.append(SeizureEvent(a / fs, b / fs, label=label, confidence=conf))
    return events
