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
)
from brr.data.preprocess import preprocess_signals
from brr.data.recording import (
    Recording,
    RecordingStream,
    Window,
    count_windows,
    iter_windows,
    open_recording,
    read_recording,
)
