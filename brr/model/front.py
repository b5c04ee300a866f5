"""The detector's front, computed once per recording instead of once per window.

The front (``V3Detector.forward_front``: the TCN encoder's dilated 'same' convolutions, its 1x1
convolutions and its strided convolution of kernel = stride = ``downsample``, then the per-step electrode
projection) computes each step from a fixed span of samples around it: step ``j`` of a span starting at
sample ``a`` reads samples ``a + ds*j - left`` to ``a + ds*j + ds - 1 + right`` (``front_receptive_field``).
Windows overlap (60 s every 10 s: each sample is in six), so running the front per window computes every
step six times. Here it runs once over the recording, in chunks of ``chunk_samples`` read with a halo of
the receptive field on each side, and each window's steps are cut from the result.

Per window, the convolutions zero-pad at the window's edges, so the first and last
``FrontGeometry.edge_steps`` steps of a window see padding where the shared front sees the signal around
the window. The detector was trained on the padded edges, and with the signal there its logits move beyond
fp32's tolerance (a measured 1.1-1.7 at window edges), so those steps are recomputed per window, as the
window sees them: the front over the window's first and last ``FrontGeometry.edge_span`` samples, which
zero-pads where the window does (its convolutions pad every layer at the span's edge as at the window's).
Every step of a window is then the per-window number, up to fp32 rounding, for a fifth of a window's
front per window (v3: two 1,536-sample spans of 15,360) instead of all of it. A window's steps line up with
the chunk's only where the strided convolution's phase is the same: a chunk starts at a multiple of
``downsample`` and so must the windows, so the stride must be one. The last window, aligned to the
recording's end (as ``brr.runtime.windows.model_windows`` places it), may be out of phase: its front is run
per window.

Memory is bounded by the chunk: the front never sees more than ``max(chunk, window)`` samples plus the
halos, and the samples and features kept (a window's edges are read from the samples) are at most a
window's and a chunk's, whatever the recording's length.

Without PyTorch (serving an exported front and rest runs it); ``overlap_features`` runs a ``V3Detector``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from typing import Any, NamedTuple

import numpy as np

from brr.errors import UsageError
from brr.model.config import DetectorConfig

# (1, 19, samples) float32 -> (1, 19, samples // downsample, D) float32: one front over a span of samples.
Front = Callable[[np.ndarray], np.ndarray]


class OverlapUnavailable(UsageError):
    """The windows cannot share one front: a stride that is not a whole number of the front's steps."""


def front_receptive_field(config: DetectorConfig) -> tuple[int, int]:
    """(left, right): the samples before a step's first sample and after its last that the step reads.

    Each dilated convolution of kernel k and dilation d reads (k - 1) / 2 * d samples on each side; the
    1x1 convolutions and the electrode projection read none; the strided convolution reads the ``downsample``
    samples of its own step.
    """
    reach = (config.tcn_kernel - 1) // 2 * sum(config.tcn_dilations)
    return reach, reach


@dataclass(frozen=True)
class FrontGeometry:
    """How a front's steps relate to samples: its receptive field, its step and the detector's window."""

    left: int
    right: int
    downsample: int
    window: int

    @classmethod
    def of(cls, config: DetectorConfig) -> FrontGeometry:
        left, right = front_receptive_field(config)
        return cls(left, right, config.downsample, config.window_samples)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FrontGeometry:
        return cls(**{key: int(data[key]) for key in ("left", "right", "downsample", "window")})

    def to_dict(self) -> dict[str, int]:
        return asdict(self)

    @property
    def steps(self) -> int:
        return self.window // self.downsample

    @property
    def halo(self) -> int:
        """Samples read before a chunk: the left receptive field, rounded up to whole steps (to keep the phase)."""
        return -(-self.left // self.downsample) * self.downsample

    @property
    def edge_steps(self) -> tuple[int, int]:
        """How many of a window's first and last steps read past its edges (zero padding, per window)."""
        return -(-self.left // self.downsample), -(-self.right // self.downsample)

    @property
    def edge_span(self) -> int:
        """Samples from a window's edge whose front gives its edge steps as the window's own front does: the
        edge steps and the receptive field beyond them, in whole steps, at most the window."""
        first, last = self.edge_steps
        reach = max(first * self.downsample + self.right, last * self.downsample + self.left)
        return min(-(-reach // self.downsample) * self.downsample, self.window)


class WindowFeatures(NamedTuple):
    """One window's front output: ``features`` (19, steps, D) float32; ``valid`` (window,) bool, False on the
    zero padding of a recording shorter than a window."""

    start: int
    features: np.ndarray
    valid: np.ndarray


def window_starts(n_samples: int, window: int, stride: int) -> list[int]:
    """The windows brr-infer runs (``brr.runtime.windows.model_windows``): every ``stride`` samples until one
    reaches the end, that last one moved back to end with the recording; one window from 0 when the
    recording is shorter than a window."""
    count = 0 if n_samples <= 0 else 1 + max(0, -(-(n_samples - window) // stride))
    starts = [k * stride for k in range(count)]
    if count > 1 and starts[-1] + window > n_samples:
        starts[-1] = n_samples - window
    return starts


class _Samples:
    """A forward-only view of consecutive (19, k) blocks: spans are read, samples before a point released."""

    def __init__(self, blocks: Iterable[np.ndarray]):
        self._blocks = iter(blocks)
        self._buffer = np.zeros((0, 0), dtype=np.float32)
        self._start = 0  # sample index of _buffer[:, 0]

    def span(self, start: int, stop: int) -> np.ndarray:
        if start < self._start:
            raise ValueError(f"samples before {self._start} were released, {start} asked for")
        while self._start + self._buffer.shape[-1] < stop:
            block = np.asarray(next(self._blocks), dtype=np.float32)
            self._buffer = block if self._buffer.size == 0 else np.concatenate([self._buffer, block], axis=-1)
        return self._buffer[:, start - self._start : stop - self._start]

    def release(self, before: int) -> None:
        drop = min(max(before - self._start, 0), self._buffer.shape[-1])
        self._buffer = self._buffer[:, drop:]
        self._start += drop


def overlap_windows(front: Front, blocks: Iterable[np.ndarray], n_samples: int, geometry: FrontGeometry,
                    stride: int, chunk_samples: int) -> Iterator[WindowFeatures]:
    """The front output of each of brr-infer's windows (``window_starts``), in order, with the front run once
    over the recording (consecutive (19, k) ``blocks`` of ``n_samples``) in chunks of ``chunk_samples``."""
    ds, window = geometry.downsample, geometry.window
    if stride % ds:
        raise OverlapUnavailable(f"a stride of {stride} samples is not a whole number of the front's "
                                 f"{ds}-sample steps: windows cannot share one front; use per-window inference "
                                 f"or a stride that is a multiple of {ds} samples")
    starts = window_starts(n_samples, window, stride)
    samples = _Samples(blocks)
    if n_samples < window:  # one zero-padded window: its front is the per-window front
        signal = samples.span(0, n_samples)
        padded = np.zeros((1, signal.shape[0], window), dtype=np.float32)
        padded[0, :, :n_samples] = signal
        valid = np.arange(window) < n_samples
        yield WindowFeatures(0, front(padded)[0], valid)
        return
    valid = np.ones(window, dtype=bool)
    in_phase = [s for s in starts if s % ds == 0]
    out_of_phase = [s for s in starts if s % ds]  # at most the last window, moved back to end with the recording
    keep_from = min(out_of_phase, default=n_samples)
    end = in_phase[-1] + window
    core = max(ds, chunk_samples // ds * ds)
    pending = iter(in_phase)
    next_start = next(pending, None)
    features: np.ndarray | None = None
    first_step = 0  # the step of features[:, 0]
    for a in range(0, end, core):
        b = min(a + core, end)
        lo, hi = max(0, a - geometry.halo), min(n_samples, b + geometry.right)
        out = front(samples.span(lo, hi)[None])[0]
        new = out[:, (a - lo) // ds : (b - lo) // ds]
        features = new if features is None else np.concatenate([features, new], axis=1)
        while next_start is not None and next_start + window <= b:
            j = next_start // ds - first_step
            shared = features[:, j : j + geometry.steps]
            yield WindowFeatures(next_start, _with_own_edges(front, samples, shared, next_start, geometry), valid)
            next_start = next(pending, None)
        drop = (end if next_start is None else next_start) // ds - first_step
        features, first_step = features[:, drop:], first_step + drop
        samples.release(min(b - geometry.halo, keep_from, end if next_start is None else next_start))
    for start in out_of_phase:
        yield WindowFeatures(start, front(samples.span(start, start + window)[None])[0], valid)


def _with_own_edges(front: Front, samples: _Samples, shared: np.ndarray, start: int,
                    geometry: FrontGeometry) -> np.ndarray:
    """The window at ``start``'s steps: ``shared`` inside, its edge steps from the front over its edge spans."""
    span, window, ds = geometry.edge_span, geometry.window, geometry.downsample
    if 2 * span >= window:  # edges that meet: the window's own front costs no more
        return front(samples.span(start, start + window)[None])[0]
    first, last = geometry.edge_steps
    edges = front(np.stack([samples.span(start, start + span), samples.span(start + window - span, start + window)]))
    return np.concatenate([edges[0, :, :first], shared[:, first : geometry.steps - last],
                           edges[1, :, span // ds - last :]], axis=1)


def overlap_features(model: Any, signal: np.ndarray, stride: int, chunk_samples: int) -> Iterator[WindowFeatures]:
    """``overlap_windows`` of a ``V3Detector`` (eval mode) over a whole (19, n) float32 ``signal``."""
    import torch

    def front(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return model.forward_front(torch.from_numpy(np.ascontiguousarray(x))).numpy()

    yield from overlap_windows(front, [signal], signal.shape[-1], FrontGeometry.of(model.config), stride,
                               chunk_samples)
