"""EEG ingestion: EDF/BDF reading, montage mapping, preprocessing, windowing, synthetic corpora."""

from brr.data.channels import map_channels
from brr.data.errors import (
    AmbiguousChannelsError,
    MissingChannelsError,
    RecordingError,
    RecordingTooShortError,
    TruncatedRecordingError,
    UnreadableRecordingError,
    UnsupportedSamplingRateError,
    UnusableRecordingError,
)
from brr.data.preprocess import preprocess_signals
from brr.data.quality import DataQuality, QualityPolicy
from brr.data.recording import (
    Recording,
    RecordingStream,
    Window,
    count_windows,
    iter_windows,
    open_recording,
    read_recording,
    recording_files,
    windows_of_files,
)

__all__ = [
    "AmbiguousChannelsError",
    "DataQuality",
    "MissingChannelsError",
    "QualityPolicy",
    "Recording",
    "RecordingError",
    "RecordingStream",
    "RecordingTooShortError",
    "TruncatedRecordingError",
    "UnreadableRecordingError",
    "UnsupportedSamplingRateError",
    "UnusableRecordingError",
    "Window",
    "count_windows",
    "iter_windows",
    "map_channels",
    "open_recording",
    "preprocess_signals",
    "read_recording",
    "recording_files",
    "windows_of_files",
]
