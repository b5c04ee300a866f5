"""Read EDF/BDF recordings into the model's input contract: 19 channels, 256 Hz, preprocessed float32.

- :func:`open_recording` validates a file and returns a :class:`RecordingStream` that yields
  preprocessed blocks lazily (bounded memory: one block plus filter padding), for 24-hour files.
- :func:`read_recording` loads a whole recording into a :class:`Recording` (built on the stream).
- :func:`iter_windows` cuts either of them into model windows.
- :func:`recording_files` finds the recordings of a folder.

Every ingestion failure raises a :class:`~brr.data.errors.RecordingError` subclass naming the file.
Opening a recording also assesses its data quality (:mod:`brr.data.quality`) on the raw samples:
the stream's ``quality`` counts the channels that are non-finite, flat or saturated, and a recording
with too many unusable channels is refused before any preprocessing.
The stream's ``start_datetime`` is the header's recording start (None when the header's date and
time do not make one).
Physical values are converted to microvolts from the channel's physical dimension (uV, mV, V, nV);
an unknown or empty dimension is taken to be microvolts.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pyedflib

from brr.data.channels import ChannelMapping, map_channels
from brr.data.errors import (
    RecordingTooShortError,
    TruncatedRecordingError,
    UnreadableRecordingError,
    UnsupportedSamplingRateError,
    UnusableRecordingError,
)
from brr.data.preprocess import (
    TARGET_RATE,
    FilterBank,
    NormalisationStats,
    design_filters,
    filtered_span,
    normalisation_spans,
    normalise,
    resampling_ratio,
)
from brr.data.quality import DEFAULT_QUALITY, ChannelRails, DataQuality, QualityPolicy, assess_quality
from brr.montage import CHANNELS, N_CHANNELS

__all__ = [
    "DEFAULT_BLOCK_S",
    "STRIDE_S",
    "WINDOW_S",
    "Recording",
    "RecordingStream",
    "Window",
    "count_windows",
    "iter_windows",
    "open_recording",
    "read_recording",
]

RECORDING_SUFFIXES = (".edf", ".bdf")
WINDOW_S = 60
STRIDE_S = 10
DEFAULT_BLOCK_S = 600

_FIXED_HEADER_BYTES = 256
_MICROVOLTS_PER_UNIT = {"uv": 1.0, "µv": 1.0, "μv": 1.0, "mv": 1e3, "v": 1e6, "nv": 1e-3}


@dataclass(frozen=True, eq=False)
class Recording:
    """A whole preprocessed recording: ``signals`` is float32 ``(19, n)`` at 256 Hz in ``CHANNELS`` order."""

    signals: np.ndarray
    path: str | None
    source_rate: float
    source_labels: tuple[str, ...]
    sampling_rate: int = TARGET_RATE
    channels: tuple[str, ...] = CHANNELS
    start_datetime: datetime.datetime | None = None

    @property
    def n_samples(self) -> int:
        return int(self.signals.shape[-1])

    @property
    def duration_s(self) -> float:
        return self.n_samples / self.sampling_rate

    def iter_blocks(self) -> Iterator[np.ndarray]:
        """The signal as one block (the in-memory counterpart of :meth:`RecordingStream.iter_blocks`)."""
        yield self.signals


class RecordingStream:
    """An open, validated recording that preprocesses on demand. Use :func:`open_recording`.

    Normalisation statistics are estimated when the stream is opened (see
    :mod:`brr.data.preprocess`); blocks are then resampled, filtered and normalised one at a time,
    each with :data:`~brr.data.preprocess.FILTER_PADDING_S` of context on both sides so that block
    seams are invisible. Close it (or use it as a context manager) to release the file.
    """

    def __init__(
        self,
        reader: pyedflib.EdfReader,
        path: str,
        mapping: ChannelMapping,
        source_rate: float,
        n_source_samples: int,
        microvolts_per_unit: np.ndarray,
        filters: FilterBank,
        block_s: float,
        quality: DataQuality | None = None,
    ) -> None:
        self._reader: pyedflib.EdfReader | None = reader
        self._indices = mapping.indices
        self._microvolts_per_unit = microvolts_per_unit
        self._filters = filters
        self.path = path
        self.source_labels = mapping.source_labels
        self.source_rate = source_rate
        self.n_source_samples = n_source_samples
        self.sampling_rate = TARGET_RATE
        self.channels = CHANNELS
        self.mains_hz = filters.notch_hz
        self.quality = quality
        self.start_datetime = header_start(reader)
        up, down = resampling_ratio(source_rate, path)
        self.n_samples = -(-n_source_samples * up // down)
        self.block_samples = max(1, int(round(block_s * TARGET_RATE)))
        sample = np.concatenate(
            [self._filtered(a, b) for a, b in normalisation_spans(self.n_samples)], axis=-1
        )
        self.normalisation = NormalisationStats.estimate(sample)

    @property
    def duration_s(self) -> float:
        return self.n_samples / self.sampling_rate

    def _read_raw(self, start: int, stop: int) -> np.ndarray:
        if self._reader is None:
            raise ValueError(f"{self.path}: recording stream is closed")
        raw = np.empty((N_CHANNELS, stop - start), dtype=np.float64)
        for row, index in enumerate(self._indices):
            raw[row] = self._reader.readSignal(index, start, stop - start)
        return raw * self._microvolts_per_unit[:, None]

    def _filtered(self, start: int, stop: int) -> np.ndarray:
        return filtered_span(
            self._read_raw, self.n_source_samples, self.source_rate, start, stop, self._filters
        )

    def iter_blocks(self) -> Iterator[np.ndarray]:
        """Consecutive preprocessed float32 blocks ``(19, <= block_samples)`` covering the recording."""
        for start in range(0, self.n_samples, self.block_samples):
            stop = min(start + self.block_samples, self.n_samples)
            yield normalise(self._filtered(start, stop), self.normalisation)

    def read_all(self) -> Recording:
        """The whole preprocessed recording in memory (one float32 array plus one block at a time)."""
        signals = np.empty((N_CHANNELS, self.n_samples), dtype=np.float32)
        position = 0
        for block in self.iter_blocks():
            signals[:, position : position + block.shape[-1]] = block
            position += block.shape[-1]
        return Recording(signals, self.path, self.source_rate, self.source_labels,
                         start_datetime=self.start_datetime)

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    def __enter__(self) -> RecordingStream:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def header_start(reader: pyedflib.EdfReader) -> datetime.datetime | None:
    """The recording start the header gives, or None when its date and time are no valid moment
    (pyedflib reads the fields, e.g. 31.02.21, but cannot make a datetime of them)."""
    try:
        return reader.getStartdatetime()
    except (ValueError, OverflowError):
        return None


def _expected_file_size(path: str) -> int | None:
    """File size the EDF/BDF header promises, or None if the header is too broken to tell."""
    with open(path, "rb") as fh:
        header = fh.read(256)
        if len(header) < 256:
            return None
        try:
            header_bytes = int(header[184:192])
            n_records = int(header[236:244])
            n_signals = int(header[252:256])
        except ValueError:
            return None
        if n_records < 0 or n_signals <= 0:  # -1: record count unknown (file still being written)
            return None
        # The samples-per-record fields follow the 216 bytes of other per-signal fields.
        fh.seek(256 + 216 * n_signals)
        field = fh.read(8 * n_signals)
    if len(field) < 8 * n_signals:
        return 256 * (1 + n_signals)  # the signal headers are cut short
    try:
        samples_per_record = [int(field[8 * i : 8 * i + 8]) for i in range(n_signals)]
    except ValueError:
        return None
    bytes_per_sample = 3 if header[:1] == b"\xff" else 2  # BDF stores 24-bit samples
    return header_bytes + n_records * sum(samples_per_record) * bytes_per_sample


def _open_reader(path: str) -> pyedflib.EdfReader:
    if os.path.isdir(path):
        raise UnreadableRecordingError(path, "is a folder, not an EDF/BDF file")
    if not os.path.isfile(path):
        if os.path.islink(path):
            raise UnreadableRecordingError(path, f"no such file: a broken link to {os.readlink(path)}")
        raise UnreadableRecordingError(path, "no such file")
    try:
        expected, actual = _expected_file_size(path), os.path.getsize(path)
    except OSError as error:  # no permission, an I/O error
        raise UnreadableRecordingError(path, f"cannot be read ({error.strerror or error})") from error
    if actual < _FIXED_HEADER_BYTES:
        raise UnreadableRecordingError(
            path, f"not an EDF/BDF file: {actual} bytes, shorter than the {_FIXED_HEADER_BYTES}-byte header"
            if actual else "empty file (0 bytes)")
    if expected is not None and actual < expected:
        raise TruncatedRecordingError(path, expected, actual)
    try:
        reader = pyedflib.EdfReader(path)
    except OSError as error:
        raise UnreadableRecordingError(path, f"not a readable EDF/BDF file ({error})") from error
    if not reader.datarecord_duration > 0:
        reader.close()
        raise UnreadableRecordingError(
            path, f"the header's data record duration is {reader.datarecord_duration!r} s; it must be positive")
    return reader


def _channel_rails(reader: pyedflib.EdfReader, indices: tuple[int, ...], labels: tuple[str, ...],
                   microvolts_per_unit: np.ndarray, path: str) -> list[ChannelRails]:
    """Each montage channel's rails and digital step; refuses a digital range that cannot be scaled."""
    rails = []
    for index, label, scale in zip(indices, labels, microvolts_per_unit, strict=True):
        digital_min, digital_max = reader.getDigitalMinimum(index), reader.getDigitalMaximum(index)
        if not digital_min < digital_max:
            raise UnreadableRecordingError(
                path, f"signal {label!r}: digital minimum {digital_min} is not below digital maximum "
                f"{digital_max}, so its samples cannot be scaled to physical values")
        physical_min, physical_max = reader.getPhysicalMinimum(index), reader.getPhysicalMaximum(index)
        with np.errstate(over="ignore"):
            step = abs(np.float64(physical_max) - np.float64(physical_min)) / (digital_max - digital_min)
        rails.append(ChannelRails(physical_min, physical_max, float(step), float(scale)))
    return rails


def open_recording(
    path: str | os.PathLike,
    channel_map: Mapping[str, str | None] | None = None,
    mains_hz: float | None = 60.0,
    min_duration_s: float = WINDOW_S,
    block_s: float = DEFAULT_BLOCK_S,
    quality: QualityPolicy | None = DEFAULT_QUALITY,
) -> RecordingStream:
    """Open and validate an EDF/BDF file; preprocessing happens lazily in :meth:`RecordingStream.iter_blocks`.

    ``channel_map``: see :func:`~brr.data.channels.map_channels`. ``mains_hz``: notch frequency
    (60, or 50; None for no notch). ``min_duration_s``: shorter recordings raise
    :class:`RecordingTooShortError` (default one model window; 0 accepts any non-empty file).
    ``block_s``: preprocessing block length, which bounds memory. ``quality``: the data-quality
    policy; a recording it finds unusable raises :class:`UnusableRecordingError`, and the stream's
    ``quality`` holds the assessment (None: not assessed).
    """
    path = os.fspath(path)
    reader = _open_reader(path)
    try:
        mapping = map_channels(reader.getSignalLabels(), channel_map, path)
        rates = {
            label: float(reader.getSampleFrequency(i))
            for label, i in zip(mapping.source_labels, mapping.indices, strict=True)
        }
        if len(set(rates.values())) > 1:
            raise UnsupportedSamplingRateError(
                path,
                f"the montage channels have different sampling rates {rates}; one common rate is required",
            )
        source_rate = next(iter(rates.values()))
        resampling_ratio(source_rate, path)
        n_source_samples = int(reader.getNSamples()[mapping.indices[0]])
        duration_s = n_source_samples / source_rate
        if n_source_samples == 0 or duration_s < min_duration_s:
            raise RecordingTooShortError(path, duration_s, min_duration_s)
        microvolts_per_unit = np.array(
            [
                _MICROVOLTS_PER_UNIT.get(reader.getPhysicalDimension(i).strip().lower(), 1.0)
                for i in mapping.indices
            ]
        )
        rails = _channel_rails(reader, mapping.indices, mapping.source_labels, microvolts_per_unit, path)
        assessment = None
        if quality is not None:
            assessment = assess_quality(
                lambda start, stop: np.stack([reader.readSignal(i, start, stop - start) for i in mapping.indices]),
                n_source_samples, source_rate, rails, CHANNELS, quality)
            if not assessment.usable:
                raise UnusableRecordingError(path, assessment)
        return RecordingStream(
            reader,
            path,
            mapping,
            source_rate,
            n_source_samples,
            microvolts_per_unit,
            design_filters(mains_hz=mains_hz),
            block_s,
            assessment,
        )
    except BaseException:
        reader.close()
        raise


def recording_files(folder: str | os.PathLike) -> list[Path]:
    """Every entry under ``folder`` (recursively) named like a recording (.edf/.bdf, any case) that is not a
    folder, sorted; a broken link or a pipe so named is listed, so that it is reported, not left out."""
    return sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in RECORDING_SUFFIXES and not p.is_dir())


def read_recording(
    path: str | os.PathLike,
    channel_map: Mapping[str, str | None] | None = None,
    mains_hz: float | None = 60.0,
    min_duration_s: float = WINDOW_S,
    quality: QualityPolicy | None = DEFAULT_QUALITY,
) -> Recording:
    """Read and preprocess a whole EDF/BDF recording (see :func:`open_recording` for the arguments)."""
    with open_recording(path, channel_map, mains_hz, min_duration_s, quality=quality) as stream:
        return stream.read_all()


class Window(NamedTuple):
    """One model window: start time, float32 ``(19, window)`` signals, per-sample validity."""

    start_s: float
    signals: np.ndarray
    valid: np.ndarray


def count_windows(n_samples: int, window: int, stride: int) -> int:
    """Windows that :func:`iter_windows` yields: starts 0, stride, ... until one reaches the end."""
    if n_samples <= 0:
        return 0
    return 1 + max(0, -(-(n_samples - window) // stride))


def _seconds_to_samples(seconds: float, name: str) -> int:
    samples = round(seconds * TARGET_RATE)
    if samples <= 0 or abs(samples - seconds * TARGET_RATE) > 1e-6:
        raise ValueError(
            f"{name}={seconds!r} s is not a positive whole number of samples at {TARGET_RATE} Hz"
        )
    return samples


def iter_windows(
    recording: Recording | RecordingStream, window_s: float = WINDOW_S, stride_s: float = STRIDE_S
) -> Iterator[Window]:
    """Windows of ``window_s`` every ``stride_s`` seconds, in bounded memory for a stream.

    Windows start at 0, stride, 2*stride, ... and stop with the first one that reaches the end of
    the recording, so every sample is covered (exactly once when stride == window). Samples past the
    end are zeros with ``valid`` False; a recording shorter than a window gives one padded window.
    """
    window = _seconds_to_samples(window_s, "window_s")
    stride = _seconds_to_samples(stride_s, "stride_s")
    if stride > window:
        raise ValueError(f"stride_s={stride_s} exceeds window_s={window_s}: samples would be skipped")
    total = recording.n_samples
    blocks = recording.iter_blocks()
    buffer = np.zeros((N_CHANNELS, 0), dtype=np.float32)
    buffer_start = 0  # sample index of buffer[:, 0]
    for k in range(count_windows(total, window, stride)):
        start = k * stride
        stop = min(start + window, total)
        while buffer_start + buffer.shape[-1] < stop:
            block = next(blocks)
            # No copy for the first block: an in-memory recording is windowed from its own array.
            buffer = block if buffer.shape[-1] == 0 else np.concatenate([buffer, block], axis=-1)
        signals = np.zeros((N_CHANNELS, window), dtype=np.float32)
        signals[:, : stop - start] = buffer[:, start - buffer_start : stop - buffer_start]
        valid = np.zeros(window, dtype=bool)
        valid[: stop - start] = True
        yield Window(start / TARGET_RATE, signals, valid)
        # Keep only what later windows still need.
        buffer = buffer[:, start + stride - buffer_start :]
        buffer_start = start + stride


def windows_of_files(
    files: Iterable[str | os.PathLike], window_s: float, stride_s: float, max_windows: int | None = None
) -> Iterator[tuple[Path, Window]]:
    """``(file, window)`` for the windows of each of ``files`` in turn, at most ``max_windows`` in all: one
    recording open at a time, a stride longer than the window taken as the window, a recording shorter
    than a window giving one padded window."""
    given = 0
    for path in map(Path, files):
        with open_recording(path, min_duration_s=0) as stream:
            for window in iter_windows(stream, window_s, min(stride_s, window_s)):
                if max_windows is not None and given >= max_windows:
                    return
                given += 1
                yield path, window
