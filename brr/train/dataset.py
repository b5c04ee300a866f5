"""Training windows from an EDF corpus with per-sample seizure labels from ``.csv_bi`` files.

A corpus is a folder (searched recursively) of ``*.edf``/``*.bdf`` files, each with a ``.csv_bi``
of the same stem. Recordings, not windows, are split into training and validation (seeded), so no
seizure is seen from both sides.

Seizure windows are rare (a few percent of a clinical corpus), so each epoch draws its windows
with replacement: a share ``positive_fraction`` from the windows that contain any seizure sample,
the rest from the others, each uniformly. The draw depends only on (seed, epoch), so an epoch can
be replayed exactly on resume.

Preprocessed recordings stay in memory when the corpus fits in ``cache_max_mb``; otherwise the
loader streams: the epoch's draws are grouped by recording (recordings in shuffled order) and one
recording is read at a time, so batches then mostly come from one recording.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from brr.data import Recording, RecordingError, count_windows, read_recording
from brr.data.annotations import SeizureEvent, events_to_labels, read_csv_bi_with_duration
from brr.data.preprocess import TARGET_RATE
from brr.errors import InputError
from brr.montage import N_CHANNELS

RECORDING_SUFFIXES = (".edf", ".bdf")
BYTES_PER_SECOND = N_CHANNELS * TARGET_RATE * 4  # float32 preprocessed signals


class CorpusError(InputError):
    """A corpus folder that cannot be trained on; the message names the folder or file."""


@dataclass(frozen=True)
class CorpusEntry:
    recording_path: Path
    annotation_path: Path
    events: tuple[SeizureEvent, ...]


def find_corpus(data_dir: str | Path) -> list[CorpusEntry]:
    """Every EDF/BDF under ``data_dir`` (sorted by path) with its ``.csv_bi`` events."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise CorpusError(f"{data_dir}: data folder not found")
    paths = sorted(p for p in data_dir.rglob("*") if p.suffix.lower() in RECORDING_SUFFIXES)
    if not paths:
        raise CorpusError(f"{data_dir}: no .edf or .bdf recordings found")
    entries = []
    for path in paths:
        annotation = path.with_suffix(".csv_bi")
        if not annotation.is_file():
            raise CorpusError(f"{path}: no annotation file {annotation.name} next to it")
        try:
            events, _ = read_csv_bi_with_duration(annotation)
        except ValueError as exc:
            raise CorpusError(f"{annotation}: {exc}") from exc
        entries.append(CorpusEntry(path, annotation, tuple(events)))
    return entries


def split_corpus(
    entries: list[CorpusEntry], val_fraction: float, seed: int
) -> tuple[list[CorpusEntry], list[CorpusEntry]]:
    """(train, validation) by recording; validation gets round(val_fraction * n), at least one."""
    if len(entries) < 2:
        raise CorpusError(
            f"{entries[0].recording_path.parent}: need at least 2 recordings to split off validation, "
            f"found {len(entries)}"
        )
    n_val = min(len(entries) - 1, max(1, round(val_fraction * len(entries))))
    order = np.random.default_rng([seed, 0x5917]).permutation(len(entries))
    val = sorted(order[:n_val].tolist())
    train = sorted(order[n_val:].tolist())
    return [entries[i] for i in train], [entries[i] for i in val]


def load_recording(entry: CorpusEntry, mains_hz: float) -> tuple[Recording, np.ndarray]:
    """Preprocessed signals and per-sample 0/1 labels of one corpus entry."""
    try:
        recording = read_recording(entry.recording_path, mains_hz=mains_hz)
    except RecordingError as exc:
        raise CorpusError(str(exc)) from exc
    labels = events_to_labels(entry.events, recording.n_samples, recording.sampling_rate)
    return recording, labels


@dataclass(frozen=True)
class WindowRef:
    recording: int  # index into the dataset's entries
    start: int  # first sample
    positive: bool  # any seizure sample inside


class WindowDataset:
    """The window grid (``window_s`` every ``stride_s``, as :func:`brr.data.iter_windows`) of a corpus part."""

    def __init__(self, entries: list[CorpusEntry], window_s: float, stride_s: float,
                 mains_hz: float, cache_max_mb: float):
        self.entries = entries
        self.window = round(window_s * TARGET_RATE)
        self.stride = round(stride_s * TARGET_RATE)
        self.mains_hz = mains_hz
        self._cache: dict[int, tuple[Recording, np.ndarray]] = {}
        self.windows: list[WindowRef] = []
        total_bytes = 0
        for index, entry in enumerate(entries):
            recording, labels = load_recording(entry, mains_hz)
            total_bytes += recording.signals.nbytes
            for k in range(count_windows(recording.n_samples, self.window, self.stride)):
                start = k * self.stride
                self.windows.append(WindowRef(index, start, bool(labels[start : start + self.window].any())))
            if total_bytes <= cache_max_mb * 2**20:
                self._cache[index] = (recording, labels)
        # Partial caching would make memory depend on file order; cache all or nothing.
        self.streaming = total_bytes > cache_max_mb * 2**20
        if self.streaming:
            self._cache.clear()
        self.positives = np.array([i for i, w in enumerate(self.windows) if w.positive], dtype=np.int64)
        self.negatives = np.array([i for i, w in enumerate(self.windows) if not w.positive], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.windows)

    def draw_epoch(self, n_windows: int, positive_fraction: float, seed: int, epoch: int) -> np.ndarray:
        """Window indices of one epoch (see the module docstring); depends only on (seed, epoch)."""
        rng = np.random.default_rng([seed, epoch])
        if len(self.positives) == 0 or len(self.negatives) == 0:
            pool = self.positives if len(self.negatives) == 0 else self.negatives
            drawn = rng.choice(pool, size=n_windows, replace=True)
        else:
            from_positives = rng.random(n_windows) < positive_fraction
            drawn = np.where(
                from_positives,
                rng.choice(self.positives, size=n_windows, replace=True),
                rng.choice(self.negatives, size=n_windows, replace=True),
            )
        if self.streaming:
            recording_order = rng.permutation(len(self.entries))
            rank = np.empty_like(recording_order)
            rank[recording_order] = np.arange(len(recording_order))
            keys = np.array([rank[self.windows[i].recording] for i in drawn])
            drawn = drawn[np.argsort(keys, kind="stable")]
        return drawn

    def default_epoch_size(self, positive_fraction: float) -> int:
        """One pass over the negatives plus the oversampled positives that go with them."""
        return max(1, math.ceil(len(self.negatives) / max(1e-9, 1.0 - positive_fraction)))

    def _recording(self, index: int) -> tuple[Recording, np.ndarray]:
        if index not in self._cache:
            if not self.streaming:
                raise AssertionError("an in-memory dataset lost a recording")
            self._cache = {index: load_recording(self.entries[index], self.mains_hz)}
        return self._cache[index]

    def window_arrays(self, ref: WindowRef) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(signals (19, window) float32, labels (window,) float32, valid (window,) bool); zero-padded tail."""
        recording, labels = self._recording(ref.recording)
        stop = min(ref.start + self.window, recording.n_samples)
        n = stop - ref.start
        signals = np.zeros((N_CHANNELS, self.window), dtype=np.float32)
        signals[:, :n] = recording.signals[:, ref.start : stop]
        target = np.zeros(self.window, dtype=np.float32)
        target[:n] = labels[ref.start : stop]
        valid = np.zeros(self.window, dtype=bool)
        valid[:n] = True
        return signals, target, valid

    def batches(self, drawn: np.ndarray, batch_size: int, skip_batches: int = 0) -> Iterator[tuple[np.ndarray, ...]]:
        """Stacked (signals, labels, valid) batches of the drawn windows, starting at batch ``skip_batches``."""
        for first in range(skip_batches * batch_size, len(drawn), batch_size):
            parts = [self.window_arrays(self.windows[i]) for i in drawn[first : first + batch_size]]
            yield tuple(np.stack(column) for column in zip(*parts))
