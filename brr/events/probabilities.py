"""The per-sample probability trace of a recording: stitched from overlapping windows, and binned.

Both come whole and streamed, side by side: :func:`stitch_windows` / :class:`Stitcher` average
overlapping window probabilities into one trace; :func:`downsample_probabilities` /
:class:`PerSecondProbabilities` reduce it to per-bin mean and max, the ``--save-probabilities`` file
(:func:`save_probabilities_npz`, :func:`load_probabilities_npz`).

:class:`Stitcher` keeps only the window overlap region (one window length plus one stride of float64
accumulators), never the window outputs themselves; :func:`stitch_windows` holds the finished trace
of the whole recording (float32: 88 MB per 24 h at 256 Hz).
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from brr.atomic import atomic_write_bytes
from brr.data.preprocess import TARGET_RATE

__all__ = [
    "PerSecondProbabilities",
    "Stitcher",
    "downsample_probabilities",
    "load_probabilities_npz",
    "probabilities_npz",
    "save_probabilities_npz",
    "stitch_windows",
]


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
    prob: np.ndarray, fs: float = TARGET_RATE, resolution_s: float = 1.0
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


class PerSecondProbabilities:
    """Streaming :func:`downsample_probabilities` (same bins, same values)."""

    def __init__(self, fs: float = TARGET_RATE, resolution_s: float = 1.0) -> None:
        self.fs, self.resolution_s = fs, resolution_s
        self.bin_samples = round(fs * resolution_s)
        self.n_samples = 0
        self._means: list[np.ndarray] = []
        self._peaks: list[np.ndarray] = []
        self._carry = np.zeros(0, dtype=np.float32)

    def add(self, chunk: np.ndarray) -> None:
        self.n_samples += chunk.size
        data = np.concatenate([self._carry, chunk.astype(np.float32, copy=False)])
        whole = data.size - data.size % self.bin_samples
        if whole:
            self._append(data[:whole])
        self._carry = data[whole:].copy()

    def finish(self) -> tuple[np.ndarray, np.ndarray]:
        if self._carry.size:
            self._append(self._carry)
            self._carry = np.zeros(0, dtype=np.float32)
        empty = np.zeros(0, dtype=np.float16)
        return (np.concatenate(self._means) if self._means else empty,
                np.concatenate(self._peaks) if self._peaks else empty)

    def _append(self, data: np.ndarray) -> None:
        mean, peak = downsample_probabilities(data, self.fs, self.resolution_s)
        self._means.append(mean)
        self._peaks.append(peak)

    def npz_bytes(self) -> bytes:
        """The ``--save-probabilities`` file of the trace added so far (see :func:`probabilities_npz`)."""
        mean, peak = self.finish()
        return probabilities_npz(mean, peak, self.fs, self.resolution_s, self.n_samples)


def probabilities_npz(mean: np.ndarray, peak: np.ndarray, fs: float, resolution_s: float, n_samples: int) -> bytes:
    """The compressed ``.npz`` of binned probabilities. Keys: ``mean`` and ``max`` (float16, one value per
    ``resolution_s``), ``fs``, ``resolution_s``, ``n_samples`` (of the trace)."""
    buffer = io.BytesIO()
    np.savez_compressed(buffer, mean=mean, max=peak, fs=np.float64(fs), resolution_s=np.float64(resolution_s),
                        n_samples=np.int64(n_samples))
    return buffer.getvalue()


def save_probabilities_npz(
    path: str | os.PathLike, prob: np.ndarray, fs: float = TARGET_RATE, resolution_s: float = 1.0
) -> Path:
    """Write the ``--save-probabilities`` file of a whole trace (atomic; :func:`probabilities_npz`)."""
    mean, peak = downsample_probabilities(prob, fs, resolution_s)
    return atomic_write_bytes(path, probabilities_npz(mean, peak, fs, resolution_s, np.asarray(prob).shape[0]))


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
