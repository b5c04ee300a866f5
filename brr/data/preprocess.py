"""Signal preprocessing in front of the model: resample to 256 Hz, band-pass, notch, normalise.

Order of operations for one stretch of signal (all in float64, result float32):

1. Non-finite samples (NaN, +-inf) are replaced by linear interpolation between the nearest finite
   samples of the same channel (held constant before the first / after the last one); a channel with
   no finite sample becomes zeros. This keeps the model's input finite; it is not silent for a file:
   an EDF whose scaling overflows decodes to +-inf, and :func:`~brr.data.open_recording` counts such
   channels (with flat and saturated ones, :mod:`brr.data.quality`) and refuses a recording with too
   many of them before it gets here. In-memory callers check their own arrays.
2. ``scipy.signal.resample_poly`` with the exact rational ratio 256 / rate, its default Kaiser FIR
   adjusted so that a constant passes exactly, and odd extension (not zeros) at the ends.
3. One zero-phase cascade at 256 Hz: Butterworth band-pass 0.5-120 Hz (order 4) and an ``iirnotch``
   at mains (Q 30), both as second-order sections and run forwards-backwards by ``sosfiltfilt``
   (equivalent to ``filtfilt`` on the notch, numerically safer). A band edge at or above Nyquist is
   dropped (high-pass only) and a notch at or above Nyquist is skipped.
4. Per-channel robust normalisation ``(x - median) / scale`` with ``scale = IQR / 1.349`` (the standard
   deviation of a Gaussian with that IQR), floored at :data:`SCALE_FLOOR_UV` so that a flat channel
   gives (near) zeros instead of 0/0. Results are clipped to +-:data:`CLIP_LIMIT` robust units so that
   saturated (railed) channels, pops and movement bursts cannot dominate a window.

Normalisation statistics come from a bounded sample of the *filtered* recording, so a 24-hour file
never needs all of its samples at once: :data:`NORM_SEGMENTS` stretches of :data:`NORM_SEGMENT_S`
seconds spread evenly from start to end (all of it when the recording is shorter than that).
Sampling the whole night rather than the first minutes keeps set-up artefacts at the start from
setting the scale.
"""

from __future__ import annotations

import functools
import math
import numbers
import os
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction

import numpy as np
from scipy import signal

from brr.data.errors import UnsupportedSamplingRateError

__all__ = [
    "BAND_HZ",
    "CLIP_LIMIT",
    "FILTER_PADDING_S",
    "MIN_SOURCE_RATE",
    "NORM_SEGMENTS",
    "NORM_SEGMENT_S",
    "SCALE_FLOOR_UV",
    "TARGET_RATE",
    "FilterBank",
    "NormalisationStats",
    "design_filters",
    "filter_signals",
    "filtered_span",
    "normalisation_spans",
    "normalise",
    "preprocess_signals",
    "replace_nonfinite",
    "resample_to_target",
    "resampling_ratio",
]

TARGET_RATE = 256
BAND_HZ = (0.5, 120.0)
BANDPASS_ORDER = 4
NOTCH_Q = 30.0
# Below 240 Hz the 120 Hz band edge is above the source's Nyquist frequency: the band is not there.
MIN_SOURCE_RATE = 2 * BAND_HZ[1]
# Bounds the polyphase filter length (about 20 * max(up, down) taps) for odd rates.
MAX_RATIO_TERM = 10_000
SCALE_FLOOR_UV = 0.1
CLIP_LIMIT = 20.0
NORM_SEGMENTS = 16
NORM_SEGMENT_S = 30
# Context read on each side of a streamed block. The slowest filter pole (0.5 Hz high-pass) decays
# by e^-1 in under a second, so 30 s makes block seams agree with whole-signal filtering to ~1e-12.
FILTER_PADDING_S = 30
# Robust scale of a Gaussian: IQR = 1.349 sigma.
_IQR_PER_SIGMA = 1.3489795


def resampling_ratio(rate: float, path: str | os.PathLike | None = None) -> tuple[int, int]:
    """``(up, down)`` with ``up / down == 256 / rate`` exactly, or :class:`UnsupportedSamplingRateError`."""
    if not (isinstance(rate, numbers.Real) and math.isfinite(rate) and rate > 0):
        raise UnsupportedSamplingRateError(path, f"sampling rate {rate!r} Hz is not a positive number")
    if rate < MIN_SOURCE_RATE:
        raise UnsupportedSamplingRateError(
            path,
            f"sampling rate {rate:g} Hz is below {MIN_SOURCE_RATE:g} Hz: the {BAND_HZ[1]:g} Hz upper band "
            f"edge would be above its Nyquist frequency ({rate / 2:g} Hz)",
        )
    exact = Fraction(float(rate)).limit_denominator(1000)
    if abs(float(exact) - rate) > 1e-9 * rate:
        raise UnsupportedSamplingRateError(path, f"sampling rate {rate!r} Hz is not a simple fraction")
    ratio = Fraction(TARGET_RATE) / exact
    if max(ratio.numerator, ratio.denominator) > MAX_RATIO_TERM:
        raise UnsupportedSamplingRateError(
            path, f"sampling rate {rate:g} Hz needs resampling ratio {ratio} (terms above {MAX_RATIO_TERM})"
        )
    return ratio.numerator, ratio.denominator


def replace_nonfinite(x: np.ndarray) -> np.ndarray:
    """Float64 copy of ``(channels, n)`` ``x`` with non-finite samples interpolated (see module doc)."""
    out = np.array(x, dtype=np.float64, copy=True)
    bad = ~np.isfinite(out)
    if not bad.any():
        return out
    positions = np.arange(out.shape[-1])
    for channel in np.flatnonzero(bad.any(axis=-1)):
        good = ~bad[channel]
        if good.any():
            out[channel, ~good] = np.interp(positions[~good], positions[good], out[channel, good])
        else:
            out[channel] = 0.0
    return out


@functools.lru_cache(maxsize=16)
def _resampling_filter(up: int, down: int) -> np.ndarray:
    """resample_poly's default anti-alias FIR with every polyphase branch summing to exactly 1/up.

    The default design's branches differ in DC gain by ~1e-3, so a DC offset becomes a ripple at
    multiples of 256/up Hz, which would turn a flat channel at an offset into non-zero output.
    """
    half_len = 10 * max(up, down)
    taps = signal.firwin(2 * half_len + 1, 1.0 / max(up, down), window=("kaiser", 5.0))
    for phase in range(up):
        taps[phase::up] /= taps[phase::up].sum() * up
    return taps


def resample_to_target(x: np.ndarray, rate: float) -> np.ndarray:
    """Resample ``(channels, n)`` from ``rate`` to 256 Hz; output length ``ceil(n * 256 / rate)``."""
    up, down = resampling_ratio(rate)
    if up == down:
        return np.asarray(x, dtype=np.float64)
    # Odd extension at the ends instead of zeros: a DC offset must not become a step (and ring).
    # It only looks at samples near the edge, so streamed blocks and whole-signal calls agree.
    return signal.resample_poly(
        np.asarray(x, dtype=np.float64),
        up,
        down,
        axis=-1,
        window=_resampling_filter(up, down),
        padtype="antireflect",
    )


@dataclass(frozen=True)
class FilterBank:
    """The zero-phase filter cascade as second-order sections, and what it contains."""

    sos: np.ndarray
    band_hz: tuple[float, float | None]
    notch_hz: float | None


def design_filters(fs: float = TARGET_RATE, mains_hz: float | None = 60.0) -> FilterBank:
    """Band-pass 0.5-120 Hz (high-pass only if 120 Hz is not below Nyquist) plus mains notch.

    ``mains_hz`` None disables the notch; a notch at or above Nyquist is skipped.
    """
    nyquist = fs / 2
    low, high = BAND_HZ
    if high < nyquist:
        sections = [signal.butter(BANDPASS_ORDER, [low, high], btype="bandpass", fs=fs, output="sos")]
        band: tuple[float, float | None] = (low, high)
    else:
        sections = [signal.butter(BANDPASS_ORDER, low, btype="highpass", fs=fs, output="sos")]
        band = (low, None)
    notch = None
    if mains_hz is not None and 0 < mains_hz < nyquist:
        b, a = signal.iirnotch(mains_hz, NOTCH_Q, fs=fs)
        sections.append(signal.tf2sos(b, a))
        notch = float(mains_hz)
    return FilterBank(sos=np.concatenate(sections), band_hz=band, notch_hz=notch)


def filter_signals(x: np.ndarray, filters: FilterBank) -> np.ndarray:
    """Zero-phase filtering of ``(channels, n)`` along time (float64)."""
    n = x.shape[-1]
    if n < 2:
        return np.zeros_like(x, dtype=np.float64)
    # sosfiltfilt's default edge padding (3 * (2 * sections + 1)) fails on very short inputs.
    padlen = min(3 * (2 * len(filters.sos) + 1), n - 1)
    return signal.sosfiltfilt(filters.sos, x, axis=-1, padlen=padlen)


@dataclass(frozen=True)
class NormalisationStats:
    """Per-channel centre and robust scale, in microvolts."""

    median: np.ndarray
    scale: np.ndarray

    @classmethod
    def estimate(cls, filtered: np.ndarray) -> NormalisationStats:
        """From filtered samples ``(channels, n)``: median and floored IQR / 1.349 per channel."""
        q25, median, q75 = np.percentile(filtered, [25, 50, 75], axis=-1)
        scale = np.maximum((q75 - q25) / _IQR_PER_SIGMA, SCALE_FLOOR_UV)
        return cls(median=median, scale=scale)


def normalise(filtered: np.ndarray, stats: NormalisationStats) -> np.ndarray:
    """``(x - median) / scale`` clipped to +-CLIP_LIMIT, as float32."""
    out = (filtered - stats.median[:, None]) / stats.scale[:, None]
    np.clip(out, -CLIP_LIMIT, CLIP_LIMIT, out=out)
    return out.astype(np.float32)


def normalisation_spans(n_samples: int) -> list[tuple[int, int]]:
    """The ``[start, stop)`` stretches (at 256 Hz) that the normalisation statistics are taken from."""
    length = NORM_SEGMENT_S * TARGET_RATE
    if n_samples <= NORM_SEGMENTS * length:
        return [(0, n_samples)]
    starts = np.linspace(0, n_samples - length, NORM_SEGMENTS).round().astype(int)
    return [(int(s), int(s) + length) for s in starts]


def filtered_span(
    read_raw: Callable[[int, int], np.ndarray],
    n_raw: int,
    rate: float,
    start: int,
    stop: int,
    filters: FilterBank,
) -> np.ndarray:
    """Samples ``[start, stop)`` (256 Hz grid) of the resampled, filtered signal, read piecewise.

    ``read_raw(a, b)`` returns raw samples ``[a, b)`` as ``(channels, b - a)``. The raw stretch read
    extends :data:`FILTER_PADDING_S` beyond the span on both sides (less at the recording's ends) and
    starts on a whole resampling period, so the result matches filtering the whole recording at once.
    """
    up, down = resampling_ratio(rate)
    padding = FILTER_PADDING_S * TARGET_RATE
    # One period is `down` raw samples = `up` output samples; cutting on periods keeps the grids aligned.
    first_period = max(start - padding, 0) // up
    last_period = -(-(stop + padding) // up)
    raw = read_raw(first_period * down, min(last_period * down, n_raw))
    resampled = resample_to_target(replace_nonfinite(raw), rate)
    offset = first_period * up
    return filter_signals(resampled, filters)[:, start - offset : stop - offset]


def preprocess_signals(raw: np.ndarray, rate: float, mains_hz: float | None = 60.0) -> np.ndarray:
    """Whole-array preprocessing of raw ``(channels, n)`` microvolts at ``rate``: float32 at 256 Hz.

    The in-memory reference of the streamed path in :mod:`brr.data.recording`; both use the same
    normalisation spans, so they agree to float tolerance.
    """
    if raw.shape[-1] == 0:
        raise ValueError("cannot preprocess an empty signal")
    filtered = filter_signals(
        resample_to_target(replace_nonfinite(raw), rate), design_filters(mains_hz=mains_hz)
    )
    sample = np.concatenate([filtered[:, a:b] for a, b in normalisation_spans(filtered.shape[-1])], axis=-1)
    return normalise(filtered, NormalisationStats.estimate(sample))
