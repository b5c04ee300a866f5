"""Data quality of a recording: which montage channels are non-finite, flat or saturated, and when.

Preprocessing must turn every input into finite numbers (it interpolates non-finite samples and a
channel with none left becomes zeros), so what it hides is counted here, on the raw samples, before
the model runs:

- The recording is cut into epochs of :data:`EPOCH_S` seconds (one model window; the last epoch
  may be shorter). In each epoch every sample of every montage channel is classified, first match
  wins: *non-finite* (NaN or +-inf after the EDF's digital-to-physical scaling), *saturated* (within
  half a digital step of the channel's physical minimum or maximum, the amplifier rails), *flat*
  (in a second of signal whose peak-to-peak is below :data:`FLAT_PEAK_TO_PEAK_UV`).
- A channel is *bad* in an epoch when more than half its samples there are one of these; the epoch
  is labelled with the most frequent problem.
- A channel is *unusable* when it is bad in more than half of the recording's epochs. A recording
  with more than ``max_unusable_channels`` unusable channels is refused
  (:class:`~brr.data.errors.UnusableRecordingError`); ``unusable_spans_s`` lists the stretches
  where more than that many channels are bad at once, whatever the recording as a whole.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from brr.errors import UsageError

__all__ = [
    "DEFAULT_MAX_UNUSABLE_CHANNELS",
    "DEFAULT_QUALITY",
    "EPOCH_S",
    "FLAT_PEAK_TO_PEAK_UV",
    "PROBLEMS",
    "ChannelRails",
    "DataQuality",
    "QualityPolicy",
    "assess_quality",
    "bad_channels_line",
    "classify_epoch",
]

EPOCH_S = 60
# A second of real EEG always moves by more than this; a disconnected or shorted input does not.
FLAT_PEAK_TO_PEAK_UV = 0.5
BAD_FRACTION = 0.5
# About a quarter of the 19-channel montage.
DEFAULT_MAX_UNUSABLE_CHANNELS = 4
PROBLEMS = ("nonfinite", "saturated", "flat")
_OK = 0  # problem codes: 0 ok, then 1 + index in PROBLEMS


@dataclass(frozen=True)
class QualityPolicy:
    """How many unusable montage channels a recording may have and still be run."""

    max_unusable_channels: int = DEFAULT_MAX_UNUSABLE_CHANNELS

    def __post_init__(self) -> None:
        if self.max_unusable_channels < 0:
            raise UsageError(f"max_unusable_channels must be >= 0, got {self.max_unusable_channels}")


DEFAULT_QUALITY = QualityPolicy()


@dataclass(frozen=True, eq=False)
class ChannelRails:
    """What sample values mean for one channel, in the file's units: its rails and digital step."""

    physical_min: float
    physical_max: float
    digital_step: float
    microvolts_per_unit: float


@dataclass(frozen=True, eq=False)
class DataQuality:
    """The per-epoch, per-channel problems of one recording (codes: 0 ok, 1 + index in PROBLEMS)."""

    channels: tuple[str, ...]
    epoch_s: float
    duration_s: float
    problems: np.ndarray  # int8 (channels, epochs)
    policy: QualityPolicy

    @property
    def n_epochs(self) -> int:
        return int(self.problems.shape[1])

    def bad_epochs(self) -> dict[str, dict[str, int]]:
        """Channel -> problem -> number of epochs, for channels with any bad epoch."""
        out: dict[str, dict[str, int]] = {}
        for channel, row in zip(self.channels, self.problems, strict=True):
            counts = {name: int(np.count_nonzero(row == code)) for code, name in enumerate(PROBLEMS, 1)}
            if any(counts.values()):
                out[channel] = {name: count for name, count in counts.items() if count}
        return out

    def bad_channel_epochs(self) -> dict[str, int]:
        """Problem -> number of (channel, epoch) pairs with it."""
        return {name: int(np.count_nonzero(self.problems == code)) for code, name in enumerate(PROBLEMS, 1)}

    def unusable_channels(self) -> dict[str, str]:
        """Channel -> its most frequent problem, for channels bad in more than half the epochs."""
        out = {}
        for channel, row in zip(self.channels, self.problems, strict=True):
            if np.count_nonzero(row) > BAD_FRACTION * row.size:
                codes = np.bincount(row, minlength=len(PROBLEMS) + 1)[1:]
                out[channel] = PROBLEMS[int(np.argmax(codes))]
        return out

    def unusable_spans_s(self) -> list[list[float]]:
        """``[start, stop]`` seconds where more than ``max_unusable_channels`` channels are bad at once."""
        crowded = np.count_nonzero(self.problems, axis=0) > self.policy.max_unusable_channels
        edges = np.flatnonzero(np.diff(np.concatenate(([0], crowded.astype(np.int8), [0]))))
        return [[float(a * self.epoch_s), float(min(b * self.epoch_s, self.duration_s))]
                for a, b in edges.reshape(-1, 2)]

    @property
    def usable(self) -> bool:
        return len(self.unusable_channels()) <= self.policy.max_unusable_channels

    def reason(self) -> str:
        """Why the recording is refused (or would be), naming the channels and their problem."""
        unusable = self.unusable_channels()
        by_problem = {p: [c for c, q in unusable.items() if q == p] for p in PROBLEMS}
        detail = "; ".join(f"{p}: {', '.join(cs)}" for p, cs in by_problem.items() if cs)
        return (f"{len(unusable)} of {len(self.channels)} montage channels unusable (non-finite, flat or "
                f"saturated for most of the recording: {detail}); at most {self.policy.max_unusable_channels} "
                "allowed (max_unusable_channels)")

    def to_dict(self) -> dict[str, Any]:
        return {
            "epoch_s": self.epoch_s,
            "epochs": self.n_epochs,
            "bad_channel_epochs": self.bad_channel_epochs(),
            "channels": self.bad_epochs(),
            "unusable_channels": self.unusable_channels(),
            "unusable_spans_s": self.unusable_spans_s(),
            "max_unusable_channels": self.policy.max_unusable_channels,
        }


def bad_channels_line(doc: dict[str, Any]) -> str:
    """One short line from :meth:`DataQuality.to_dict`: each bad channel, its problems and bad epochs; or ''."""
    parts = [f"{channel} {'/'.join(problems)} in {sum(problems.values())}/{doc['epochs']} epochs"
             for channel, problems in doc["channels"].items()]
    return ("data quality: " + ", ".join(parts)) if parts else ""


def classify_epoch(x: np.ndarray, rails: Sequence[ChannelRails], rate: float) -> np.ndarray:
    """Problem code of each channel of raw ``x`` (channels, n) in the file's units (0 when not bad)."""
    n = x.shape[1]
    finite = np.isfinite(x)
    low = np.array([[min(r.physical_min, r.physical_max) + r.digital_step / 2] for r in rails])
    high = np.array([[max(r.physical_min, r.physical_max) - r.digital_step / 2] for r in rails])
    with np.errstate(invalid="ignore"):
        saturated = finite & ((x <= low) | (x >= high))
    flat = _flat_seconds(x, finite, np.array([r.microvolts_per_unit for r in rails]), max(1, round(rate)))
    counts = np.stack([np.count_nonzero(~finite, axis=1),
                       np.count_nonzero(saturated, axis=1),
                       np.count_nonzero(flat & finite & ~saturated, axis=1)], axis=1)
    bad = counts.sum(axis=1) > BAD_FRACTION * n
    return np.where(bad, 1 + np.argmax(counts, axis=1), _OK).astype(np.int8)


def _flat_seconds(x: np.ndarray, finite: np.ndarray, microvolts_per_unit: np.ndarray, second: int) -> np.ndarray:
    """Samples in a stretch of ``second`` samples whose finite values span less than the flat threshold."""
    n_channels, n = x.shape
    padded = -(-n // second) * second

    def per_second(values: np.ndarray, fill: float) -> np.ndarray:
        out = np.full((n_channels, padded), fill)
        out[:, :n] = values
        return out.reshape(n_channels, -1, second)

    top = per_second(np.where(finite, x, -np.inf), -np.inf).max(axis=2)
    bottom = per_second(np.where(finite, x, np.inf), np.inf).min(axis=2)
    any_finite = per_second(finite, False).any(axis=2)
    with np.errstate(invalid="ignore", over="ignore"):
        span_uv = (top - bottom) * microvolts_per_unit[:, None]
    flat = any_finite & (span_uv < FLAT_PEAK_TO_PEAK_UV)
    return np.repeat(flat, second, axis=1)[:, :n]


def assess_quality(
    read_physical: Callable[[int, int], np.ndarray],
    n_samples: int,
    rate: float,
    rails: Sequence[ChannelRails],
    channels: Sequence[str],
    policy: QualityPolicy,
    epoch_s: float = EPOCH_S,
) -> DataQuality:
    """Classify every epoch of a recording; ``read_physical(a, b)`` gives raw samples ``[a, b)`` in file units."""
    epoch = max(1, round(epoch_s * rate))
    codes = [classify_epoch(read_physical(start, min(start + epoch, n_samples)), rails, rate)
             for start in range(0, n_samples, epoch)]
    problems = np.stack(codes, axis=1) if codes else np.zeros((len(channels), 0), dtype=np.int8)
    return DataQuality(tuple(channels), float(epoch_s), n_samples / rate, problems, policy)
