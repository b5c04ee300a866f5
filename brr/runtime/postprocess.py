"""Per-sample seizure probabilities -> seizure events, and window stitching.

Pipeline of :func:`probabilities_to_events`, in this order:

1. Hysteresis: a sample turns "on" at ``p >= enter`` and stays on until the first
   sample with ``p < leave``.
2. Binary morphological opening (``opening_samples``) removes "on" runs shorter
   than the structuring element (spikes), then closing (``closing_samples``)
   fills "off" gaps shorter than it. The mask is zero-padded first so events
   touching either end of the recording are not eroded by the border.
3. Runs of "on" samples -> events ``[i/fs, j/fs)``.
4. Events whose gap (next start - previous stop) is < ``merge_gap_s`` are merged.
5. Events are kept when ``min_duration_s <= duration <= max_duration_s``.
   Merging comes before the duration filter (the architecture note lists them the
   other way round): fragments of one seizure split by a dip are judged as the
   whole seizure, and a merge can never create an event beyond the maximum.
6. Confidence = mean probability over the final event's samples (merged gaps
   included).

Memory design of the streaming path: :class:`Stitcher` keeps only the window
overlap region (one window length plus one stride of float64 accumulators), never
the window outputs themselves. The finalized per-sample array of the whole
recording *is* kept by :func:`stitch_windows` (float32: 88 MB per 24 h at 256 Hz;
callers may cast to float16 for 44 MB), and the event post-processing runs on that
whole-recording array. The morphology needs only boolean temporaries (1 byte per
sample).
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np
from scipy import ndimage

from brr.atomic import atomic_write_bytes
from brr.data.annotations import SeizureEvent

__all__ = [
    "PostprocessConfig",
    "Stitcher",
    "downsample_probabilities",
    "hysteresis",
    "load_probabilities_npz",
    "probabilities_to_events",
    "save_probabilities_npz",
    "stitch_windows",
]


@dataclass(frozen=True)
class PostprocessConfig:
    enter: float = 0.86
    leave: float = 0.78
    opening_samples: int = 11
    closing_samples: int = 31
    min_duration_s: float = 3.0
    max_duration_s: float = 600.0
    merge_gap_s: float = 2.0
    fs: float = 256.0

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


class Stitcher:
    """Average overlapping window predictions into one per-sample trace, streaming.

    Windows must arrive in non-decreasing ``start_sample`` order. Once a window
    starting at ``s`` has arrived, no later window can touch samples ``< s``, so
    they are final and :meth:`add` returns them. Memory is one window length plus
    one stride of accumulators, whatever the recording length.

    Samples covered by no valid window get ``fill_value`` (0.0: no evidence of a
    seizure). ``valid`` masks out padded samples of a window (e.g. the zero-padded
    tail of a short recording) so they do not dilute the average.
    """

    def __init__(self, n_samples: int | None = None, fill_value: float = 0.0):
        self.n_samples = n_samples
        self.fill_value = float(fill_value)
        self._base = 0  # absolute index of _sum[0]; everything before it was emitted
        self._sum = np.zeros(0, dtype=np.float64)
        self._cnt = np.zeros(0, dtype=np.int32)
        self._last_start = 0
        self._finished = False

    @property
    def buffered(self) -> int:
        """Number of samples held in the accumulators (bounded by window + stride)."""
        return self._sum.shape[0]

    @property
    def emitted(self) -> int:
        """Number of samples returned so far."""
        return self._base

    def add(self, start_sample: int, probs: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
        """Add one window; return the newly finalized samples (float32, maybe empty)."""
        if self._finished:
            raise RuntimeError("Stitcher already finished")
        start_sample = int(start_sample)
        if start_sample < self._last_start:
            raise ValueError(f"windows must arrive in start order: {start_sample} < {self._last_start}")
        probs = np.asarray(probs, dtype=np.float64).ravel()
        valid = np.ones(probs.shape, dtype=bool) if valid is None else np.asarray(valid, dtype=bool).ravel()
        if valid.shape != probs.shape:
            raise ValueError("valid mask and probabilities differ in shape")
        self._last_start = start_sample

        stop = start_sample + probs.shape[0]
        final_until = start_sample
        if self.n_samples is not None:
            # Samples past the end of the recording (padding) are dropped.
            keep = max(0, min(stop, self.n_samples) - start_sample)
            probs, valid, stop = probs[:keep], valid[:keep], start_sample + keep
            final_until = min(start_sample, self.n_samples)

        out = self._emit_until(final_until)
        if stop > start_sample:
            grow = stop - (self._base + self._sum.shape[0])
            if grow > 0:
                self._sum = np.concatenate((self._sum, np.zeros(grow)))
                self._cnt = np.concatenate((self._cnt, np.zeros(grow, dtype=np.int32)))
            lo = start_sample - self._base
            sl = slice(lo, lo + probs.shape[0])
            self._sum[sl] += np.where(valid, probs, 0.0)
            self._cnt[sl] += valid
        return out

    def finish(self) -> np.ndarray:
        """Return all remaining samples, up to ``n_samples`` when it was given."""
        end = self._base + self._sum.shape[0]
        if self.n_samples is not None:
            end = max(end, self.n_samples)
        out = self._emit_until(end)
        self._finished = True
        return out

    def _emit_until(self, end: int) -> np.ndarray:
        k = end - self._base
        if k <= 0:
            return np.zeros(0, dtype=np.float32)
        have = min(k, self._sum.shape[0])
        out = np.full(k, self.fill_value, dtype=np.float32)
        s, c = self._sum[:have], self._cnt[:have]
        covered = c > 0
        out[:have][covered] = s[covered] / c[covered]
        # Copy so the emitted prefix's memory is released.
        self._sum = self._sum[have:].copy()
        self._cnt = self._cnt[have:].copy()
        self._base = end
        return out


def stitch_windows(
    windows: Iterable[tuple[int, np.ndarray] | tuple[int, np.ndarray, np.ndarray]],
    n_samples: int,
    dtype: np.dtype | type = np.float32,
    fill_value: float = 0.0,
) -> np.ndarray:
    """Stitch ``(start_sample, probs[, valid])`` windows into a length-``n_samples`` trace.

    Window outputs are consumed one at a time (an iterator/generator keeps memory
    bounded); only the result array is held.
    """
    out = np.empty(int(n_samples), dtype=dtype)
    stitcher = Stitcher(n_samples, fill_value)
    pos = 0
    for window in windows:
        chunk = stitcher.add(*window)
        out[pos : pos + chunk.shape[0]] = chunk
        pos += chunk.shape[0]
    chunk = stitcher.finish()
    out[pos : pos + chunk.shape[0]] = chunk
    return out


def downsample_probabilities(
    prob: np.ndarray, fs: float = 256.0, resolution_s: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """Per-bin (default per-second) mean and max of a per-sample trace, float16.

    The last bin may be partial; its statistics use the samples it has.
    """
    prob = np.asarray(prob, dtype=np.float32).ravel()
    bin_len = int(round(fs * resolution_s))
    if bin_len < 1:
        raise ValueError("resolution_s * fs must be >= 1 sample")
    if prob.size == 0:
        empty = np.zeros(0, dtype=np.float16)
        return empty, empty.copy()
    starts = np.arange(0, prob.size, bin_len)
    sums = np.add.reduceat(prob, starts, dtype=np.float64)
    counts = np.diff(np.append(starts, prob.size))
    mean = (sums / counts).astype(np.float16)
    peak = np.maximum.reduceat(prob, starts).astype(np.float16)
    return mean, peak


def save_probabilities_npz(
    path: str | os.PathLike, prob: np.ndarray, fs: float = 256.0, resolution_s: float = 1.0
) -> Path:
    """Write the compact ``--save-probabilities`` file (atomic, compressed ``.npz``).

    Keys: ``mean`` and ``max`` (float16, one value per ``resolution_s``),
    ``fs``, ``resolution_s``, ``n_samples``.
    """
    mean, peak = downsample_probabilities(prob, fs, resolution_s)
    buf = io.BytesIO()
    np.savez_compressed(
        buf,
        mean=mean,
        max=peak,
        fs=np.float64(fs),
        resolution_s=np.float64(resolution_s),
        n_samples=np.int64(np.asarray(prob).shape[0]),
    )
    return atomic_write_bytes(path, buf.getvalue())


def load_probabilities_npz(path: str | os.PathLike) -> dict[str, np.ndarray | float | int]:
    """Read a file written by :func:`save_probabilities_npz`."""
    with np.load(path) as z:
        return {
            "mean": z["mean"],
            "max": z["max"],
            "fs": float(z["fs"]),
            "resolution_s": float(z["resolution_s"]),
            "n_samples": int(z["n_samples"]),
        }
