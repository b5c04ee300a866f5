"""Per-sample seizure probabilities -> seizure events, whole (``probabilities_to_events``) or streamed
(``SegmentedEventDetector``, the same events holding only a stretch of the trace).

Steps of :func:`probabilities_to_events`, in this order:

1. Hysteresis: a sample turns "on" at ``p >= enter`` and stays on until the first
   sample with ``p < leave``.
2. Binary morphological opening (``opening_samples``) removes "on" runs shorter
   than the structuring element (spikes), then closing (``closing_samples``)
   fills "off" gaps shorter than it. The mask is zero-padded first so events
   touching either end of the recording are not eroded by the border.
3. Runs of "on" samples -> events ``[i/fs, j/fs)``.
4. Events whose gap (next start - previous stop) is < ``merge_gap_s`` are merged.
5. Events are kept when ``min_duration_s <= duration <= max_duration_s``.
   Merging comes before the duration filter: fragments of one seizure split by a
   dip are judged as the whole seizure, and a merge can never create an event
   beyond the maximum.
6. Confidence = mean probability over the final event's samples (merged gaps
   included).

The morphology needs only boolean temporaries (1 byte per sample).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from brr.data.annotations import SeizureEvent
from brr.data.preprocess import TARGET_RATE

__all__ = ["PostprocessConfig", "SegmentedEventDetector", "hysteresis", "probabilities_to_events"]


@dataclass(frozen=True)
class PostprocessConfig:
    enter: float = 0.86
    leave: float = 0.78
    opening_samples: int = 11
    closing_samples: int = 31
    min_duration_s: float = 3.0
    max_duration_s: float = 600.0
    merge_gap_s: float = 2.0
    fs: float = float(TARGET_RATE)

    def __post_init__(self) -> None:
        if not (0.0 <= self.leave <= self.enter <= 1.0):
            raise ValueError(f"need 0 <= leave <= enter <= 1, got leave={self.leave} enter={self.enter}")
        if self.opening_samples < 0 or self.closing_samples < 0:
            raise ValueError("morphology sizes must be >= 0 (0 or 1 disables the step)")
        if not (0.0 <= self.min_duration_s <= self.max_duration_s):
            raise ValueError("need 0 <= min_duration_s <= max_duration_s")
        if self.merge_gap_s < 0 or self.fs <= 0:
            raise ValueError("merge_gap_s must be >= 0 and fs > 0")


def hysteresis(prob: np.ndarray, enter: float, leave: float) -> np.ndarray:
    """Boolean mask: on from a sample with ``p >= enter`` until the next ``p < leave``.

    Within each run of ``p >= leave`` the mask is on from the run's first
    ``p >= enter`` sample to the run's end. Works on run boundaries, so the
    temporaries are boolean/int8 arrays (bytes per sample), not index arrays.
    Thresholds are cast to the trace's float dtype, so a float32 sample equal to
    ``float32(0.78)`` counts as ``p >= 0.78`` (float32(0.78) < 0.78 in float64).
    """
    if enter < leave:
        raise ValueError(f"enter ({enter}) must be >= leave ({leave})")
    prob = np.asarray(prob)
    if np.issubdtype(prob.dtype, np.floating):
        enter, leave = prob.dtype.type(enter), prob.dtype.type(leave)
    above_leave = prob >= leave
    # enter >= leave, so every entering sample lies inside a run of above_leave,
    # and the first entering-run start at or after a run's start is inside it iff < its stop.
    enter_starts = _runs(prob >= enter)[:, 0]
    if enter_starts.size == 0:
        return np.zeros(prob.shape[0], dtype=bool)
    runs = _runs(above_leave)
    pos = np.searchsorted(enter_starts, runs[:, 0])
    has_enter = pos < enter_starts.shape[0]
    first = enter_starts[np.minimum(pos, enter_starts.shape[0] - 1)]
    on = has_enter & (first < runs[:, 1])
    delta = np.zeros(prob.shape[0] + 1, dtype=np.int8)
    np.add.at(delta, first[on], 1)
    np.add.at(delta, runs[on, 1], -1)
    return np.cumsum(delta[:-1], dtype=np.int8).astype(bool)


def _morphology(mask: np.ndarray, opening: int, closing: int) -> np.ndarray:
    pad = max(opening, closing)
    padded = np.pad(mask, pad)
    if opening > 1:
        padded = ndimage.binary_opening(padded, structure=np.ones(opening, dtype=bool))
    if closing > 1:
        padded = ndimage.binary_closing(padded, structure=np.ones(closing, dtype=bool))
    return padded[pad : pad + mask.shape[0]]


def _runs(mask: np.ndarray) -> np.ndarray:
    """(k, 2) array of [start, stop) sample indices of the True runs."""
    padded = np.concatenate(([False], mask, [False]))
    edges = np.flatnonzero(padded[1:] != padded[:-1])
    return edges.reshape(-1, 2)


def probabilities_to_events(prob: np.ndarray, cfg: PostprocessConfig | None = None) -> list[SeizureEvent]:
    """Events of a whole recording's per-sample probabilities (float16/32/64, shape (n,)).

    See the module docstring for the order of the steps.
    """
    cfg = cfg or PostprocessConfig()
    prob = np.asarray(prob)
    if prob.ndim != 1:
        raise ValueError(f"expected a 1-D probability trace, got shape {prob.shape}")
    if prob.size == 0:
        return []
    if not np.isfinite(prob).all():
        raise ValueError("probabilities contain NaN or inf")

    mask = _morphology(hysteresis(prob, cfg.enter, cfg.leave), cfg.opening_samples, cfg.closing_samples)
    merged: list[list[int]] = []
    max_gap = cfg.merge_gap_s * cfg.fs
    for a, b in _runs(mask):
        if merged and a - merged[-1][1] < max_gap:
            merged[-1][1] = int(b)
        else:
            merged.append([int(a), int(b)])

    events = []
    for a, b in merged:
        duration = (b - a) / cfg.fs
        if cfg.min_duration_s <= duration <= cfg.max_duration_s:
            conf = float(np.clip(prob[a:b].mean(dtype=np.float64), 0.0, 1.0))
            events.append(SeizureEvent(a / cfg.fs, b / cfg.fs, confidence=conf))
    return events


class SegmentedEventDetector:
    """:func:`probabilities_to_events` over a streamed trace, holding only the stretch since the last cut.

    The trace is cut in the middle of a run of at least ``quiet_samples`` samples that are all
    below ``leave``. Every step of the post-processing is then unaffected by the cut: hysteresis is
    off there, morphology reaches less than half the run, the gap to any event on the other side is
    longer than ``merge_gap_s``, and durations and confidences use the same samples. So the events
    are those of the whole trace; a trace that never goes quiet is simply held whole.
    """

    def __init__(self, config: PostprocessConfig, min_segment_samples: int = 600 * TARGET_RATE) -> None:
        self.config = config
        self.quiet_samples = (int(np.ceil(config.merge_gap_s * config.fs))
                              + 2 * max(config.opening_samples, config.closing_samples) + 2)
        self.min_segment_samples = max(min_segment_samples, self.quiet_samples)
        self.events: list[SeizureEvent] = []
        self._pending: list[np.ndarray] = []
        self._pending_samples = 0
        self._offset = 0  # sample index of the first pending sample
        self._next_attempt = self.min_segment_samples

    @property
    def held_samples(self) -> int:
        """Samples of the trace held now (since the last cut)."""
        return self._pending_samples

    def add(self, chunk: np.ndarray) -> None:
        if chunk.size == 0:
            return
        self._pending.append(chunk)
        self._pending_samples += chunk.size
        if self._pending_samples >= self._next_attempt:
            self._cut()

    def finish(self) -> list[SeizureEvent]:
        if self._pending_samples:
            self._process(np.concatenate(self._pending))
            self._pending, self._pending_samples = [], 0
        return self.events

    def _cut(self) -> None:
        trace = np.concatenate(self._pending)
        # Same comparison as the hysteresis: the threshold cast to the trace's dtype.
        quiet = np.concatenate(([False], trace < trace.dtype.type(self.config.leave), [False]))
        edges = np.flatnonzero(quiet[1:] != quiet[:-1]).reshape(-1, 2)
        long_runs = edges[edges[:, 1] - edges[:, 0] >= self.quiet_samples]
        if long_runs.size == 0:
            self._pending = [trace]
            self._next_attempt = self._pending_samples + self.min_segment_samples
            return
        start, stop = long_runs[-1]
        cut = int((start + stop) // 2)
        self._process(trace[:cut])
        rest = trace[cut:].copy()
        self._pending, self._pending_samples = [rest], rest.size
        self._next_attempt = rest.size + self.min_segment_samples

    def _process(self, segment: np.ndarray) -> None:
        fs = self.config.fs
        for event in probabilities_to_events(segment, self.config):
            # Re-derive times from sample indices so they equal the whole-trace result bit for bit.
            start = (round(event.start_s * fs) + self._offset) / fs
            stop = (round(event.stop_s * fs) + self._offset) / fs
            self.events.append(dataclasses.replace(event, start_s=start, stop_s=stop))
        self._offset += segment.size
