"""One recording through the engine: 60 s windows, batched, stitched into a per-sample probability trace.

:func:`model_windows` cuts a window every ``stride_s``; the last window is aligned to the end of
the recording (so the model never sees padding) unless the recording is shorter than a window, in
which case it is zero-padded and the padding masked out. :func:`predict_probabilities` runs them
in batches and yields the stitched trace chunk by chunk (bounded memory whatever the length);
:func:`predict_probabilities_overlap` runs the same windows with the detector's front shared between them
(``brr.model.front``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.special import expit

from brr.backends.split import SplitRunners
from brr.data import RecordingStream, iter_windows
from brr.data.preprocess import TARGET_RATE
from brr.data.recording import WINDOW_S
from brr.errors import CheckFailed
from brr.events.probabilities import Stitcher
from brr.model import INPUT_NAME, OUTPUT_NAME
from brr.model.front import overlap_windows

WINDOW_SAMPLES = WINDOW_S * TARGET_RATE


class EngineOutputError(CheckFailed):
    """The engine returned logits of the wrong shape or non-finite values for a recording."""


class EngineFailure(CheckFailed):
    """The engine raised while running a batch: no recording's fault (every one gets well-formed, finite
    batches), so the run stops."""


@dataclass(frozen=True)
class ModelWindow:
    start_sample: int
    signals: np.ndarray  # float32 (19, WINDOW_SAMPLES)
    valid: np.ndarray  # bool (WINDOW_SAMPLES,): False on zero padding
    new_samples: int  # samples this window adds to the covered prefix of the recording (for throughput)


def model_windows(stream: RecordingStream, stride_s: float) -> Iterator[ModelWindow]:
    """Windows every ``stride_s`` with the last one aligned to the end of the recording.

    :func:`~brr.data.iter_windows` zero-pads the window that reaches the end; here that window is
    replaced by the one ending exactly at the end, built from the previous window's signal (the
    previous window did not reach the end, so the missing head is shorter than one stride and lies
    inside it). Only a recording shorter than one window keeps a padded, masked window.
    """
    n = stream.n_samples
    previous: tuple[int, np.ndarray] | None = None
    covered = 0
    for window in iter_windows(stream, WINDOW_S, stride_s):
        start = round(window.start_s * TARGET_RATE)
        n_valid = int(np.count_nonzero(window.valid))
        if n_valid < WINDOW_SAMPLES and previous is not None:
            previous_start, previous_signals = previous
            head = previous_signals[:, n - WINDOW_SAMPLES - previous_start : start - previous_start]
            signals = np.concatenate([head, window.signals[:, :n_valid]], axis=1)
            yield ModelWindow(n - WINDOW_SAMPLES, signals, np.ones(WINDOW_SAMPLES, dtype=bool), n - covered)
        else:
            stop = start + n_valid
            yield ModelWindow(start, window.signals, window.valid, stop - covered)
            covered = stop
        previous = (start, window.signals)


def predict_probabilities(
    runner: Any,
    stream: RecordingStream,
    stride_s: float,
    batch_size: int,
    on_windows: Callable[[int, float], None] | None = None,
) -> Iterator[np.ndarray]:
    """Consecutive float32 chunks of the stitched per-sample seizure probability (they cover the recording).

    ``runner`` is any activated runner with input ``eeg`` and output ``logits``.
    ``on_windows(n_windows, eeg_seconds)`` is called after each batch.
    """

    def logits(batch: list[ModelWindow]) -> np.ndarray:
        return runner.infer({INPUT_NAME: np.stack([w.signals for w in batch])})[OUTPUT_NAME]

    yield from _stitched(model_windows(stream, stride_s), logits, stream, batch_size, on_windows)


@dataclass(frozen=True)
class FeatureWindow:
    """A window of :func:`model_windows` as the front's output (``brr.model.front``) instead of its signals."""

    start_sample: int
    features: np.ndarray  # float32 (19, steps, D)
    valid: np.ndarray
    new_samples: int


def predict_probabilities_overlap(
    split: SplitRunners,
    stream: RecordingStream,
    stride_s: float,
    batch_size: int,
    chunk_samples: int,
    on_windows: Callable[[int, float], None] | None = None,
) -> Iterator[np.ndarray]:
    """:func:`predict_probabilities` with the windows sharing one front: ``split``'s front runs over the
    recording in chunks of ``chunk_samples`` (``brr.model.front.overlap_windows``), its rest on each window."""

    def front(x: np.ndarray) -> np.ndarray:
        try:
            return split.run_front(x)
        except Exception as error:
            raise EngineFailure(f"the engine's front failed on {x.shape[-1]} samples of {stream.path}: "
                                f"{type(error).__name__}: {error}") from error

    def windows() -> Iterator[FeatureWindow]:
        covered = 0
        for window in overlap_windows(front, stream.iter_blocks(), stream.n_samples, split.geometry,
                                      round(stride_s * TARGET_RATE), chunk_samples):
            stop = min(window.start + WINDOW_SAMPLES, stream.n_samples)
            yield FeatureWindow(window.start, window.features, window.valid, max(stop - covered, 0))
            covered = max(covered, stop)

    def logits(batch: list[FeatureWindow]) -> np.ndarray:
        return split.run_rest(np.stack([w.features for w in batch]))

    yield from _stitched(windows(), logits, stream, batch_size, on_windows)


def _stitched(windows: Iterable[ModelWindow | FeatureWindow], logits: Callable[[list[Any]], np.ndarray],
              stream: RecordingStream, batch_size: int, on_windows: Callable[[int, float], None] | None
              ) -> Iterator[np.ndarray]:
    """The windows' logits (``logits(batch)``, checked) in batches, as stitched probability chunks."""
    # NaN for a sample no window covered: post-processing refuses it instead of calling it background.
    stitcher = Stitcher(stream.n_samples, fill_value=np.nan)
    batch: list[Any] = []

    def run_batch() -> Iterator[np.ndarray]:
        try:
            values = np.asarray(logits(batch))
        except EngineFailure:
            raise
        except Exception as error:
            raise EngineFailure(
                f"the engine failed on windows at {[w.start_sample / TARGET_RATE for w in batch]} s of "
                f"{stream.path}: {type(error).__name__}: {error}"
            ) from error
        if values.shape != (len(batch), WINDOW_SAMPLES):
            raise EngineOutputError(
                f"{stream.path}: engine returned logits of shape {values.shape}, "
                f"expected {(len(batch), WINDOW_SAMPLES)}"
            )
        if not np.isfinite(values).all():
            bad = [w.start_sample / TARGET_RATE for w, row in zip(batch, values) if not np.isfinite(row).all()]
            raise EngineOutputError(f"{stream.path}: engine returned non-finite logits in windows at {bad} s")
        probabilities = expit(values.astype(np.float32))
        for window, row in zip(batch, probabilities):
            yield stitcher.add(window.start_sample, row, window.valid)
        if on_windows is not None:
            on_windows(len(batch), sum(w.new_samples for w in batch) / TARGET_RATE)
        batch.clear()

    for window in windows:
        batch.append(window)
        if len(batch) == batch_size:
            yield from run_batch()
    if batch:
        yield from run_batch()
    yield stitcher.finish()
