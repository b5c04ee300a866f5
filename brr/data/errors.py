"""Typed ingestion errors: every way a recording can fail to load names the file and the problem.

Callers that process a corpus catch :class:`RecordingError`, log ``str(error)`` and move on to the
next file; the subclass says what kind of problem it was.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

from brr.errors import InputError

if TYPE_CHECKING:
    from brr.data.quality import DataQuality

__all__ = [
    "AmbiguousChannelsError",
    "MissingChannelsError",
    "RecordingError",
    "RecordingTooShortError",
    "TruncatedRecordingError",
    "UnreadableRecordingError",
    "UnsupportedSamplingRateError",
    "UnusableRecordingError",
]


class RecordingError(InputError):
    """A recording could not be ingested. ``path`` is the file (or None for in-memory data)."""

    def __init__(self, path: str | os.PathLike | None, problem: str) -> None:
        self.path = None if path is None else os.fspath(path)
        self.problem = problem
        where = "<in-memory recording>" if self.path is None else self.path
        super().__init__(f"{where}: {problem}")


class UnreadableRecordingError(RecordingError):
    """The file does not exist, cannot be opened, or is not EDF/BDF."""


class TruncatedRecordingError(RecordingError):
    """The header promises more data records than the file holds (an interrupted copy or write)."""

    def __init__(self, path: str | os.PathLike | None, expected_bytes: int, actual_bytes: int) -> None:
        self.expected_bytes = expected_bytes
        self.actual_bytes = actual_bytes
        super().__init__(
            path,
            f"truncated: the header describes {expected_bytes} bytes but the file has {actual_bytes} "
            f"({expected_bytes - actual_bytes} missing)",
        )


class MissingChannelsError(RecordingError):
    """Some of the 19 montage channels are not in the file."""

    def __init__(
        self, path: str | os.PathLike | None, missing: Sequence[str], available: Sequence[str]
    ) -> None:
        self.missing = tuple(missing)
        self.available = tuple(available)
        super().__init__(
            path,
            f"missing {len(self.missing)} of the 19 montage channels: {', '.join(self.missing)}; "
            f"the file has labels {list(self.available)} "
            "(pass channel_map={file label: 10-20 name} for unusual labels)",
        )


class AmbiguousChannelsError(RecordingError):
    """Two or more file labels map onto the same montage channel."""

    def __init__(self, path: str | os.PathLike | None, channel: str, labels: Sequence[str]) -> None:
        self.channel = channel
        self.labels = tuple(labels)
        super().__init__(
            path,
            f"labels {list(self.labels)} all map to channel {channel}; "
            "pass channel_map to choose one (map the others to None)",
        )


class RecordingTooShortError(RecordingError):
    """The recording is shorter than the minimum duration asked for (by default one model window)."""

    def __init__(self, path: str | os.PathLike | None, duration_s: float, min_duration_s: float) -> None:
        self.duration_s = duration_s
        self.min_duration_s = min_duration_s
        super().__init__(
            path, f"too short: {duration_s:.3f} s of signal, at least {min_duration_s:.3f} s required"
        )


class UnsupportedSamplingRateError(RecordingError):
    """The montage channels' sampling rate cannot be brought to 256 Hz faithfully."""


class UnusableRecordingError(RecordingError):
    """Too many montage channels are non-finite, flat or saturated (see :mod:`brr.data.quality`)."""

    def __init__(self, path: str | os.PathLike | None, quality: DataQuality) -> None:
        self.quality = quality
        super().__init__(path, quality.reason())
