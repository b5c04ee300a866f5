"""Input feeds for a diff, as Polygraphy-compatible data loaders (iterables of ``{"eeg": array}``).

Each loader also yields a label per window (``labelled()``) for the report. Windows are
(1, 19, samples) float32 in the model's input contract (preprocessed, per-channel normalised):

- ``EdfWindows``: windows of EDF/BDF recordings (files or folders), read and preprocessed by
  ``brr.data`` one recording at a time, so a 24-hour file is never held whole; and windows saved as
  ``.npz`` (``SAVED_WINDOWS_KEY``: (N, 19, samples), already preprocessed, e.g. the batch of a
  non-finite training step), taken as they are.
- ``SyntheticWindows``: seeded random windows: normalised-scale noise with a rhythm per channel.
- ``SeizureWindows``: a window of the synthetic corpus's EEG centred on a seizure, so that judging an
  engine on the events it serves has events to judge (the random and adversarial windows rarely hold any).
- ``AdversarialWindows``: the fixed suite every engine must survive. Each is built in microvolts
  and sent through the same preprocessing as a recording: flat channels, 1000 uV electrode pops,
  channels saturated at the amplifier rail, an all-zero window and a window of pure 60 Hz.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from brr.data import preprocess_signals, recording_files, windows_of_files
from brr.data.preprocess import TARGET_RATE
from brr.data.recording import WINDOW_S
from brr.data.synthetic import plan_recording, synthesize
from brr.errors import InputError, UsageError
from brr.model.contract import INPUT_NAME
from brr.montage import N_CHANNELS

WINDOW_SAMPLES = WINDOW_S * TARGET_RATE
# The array of a saved-windows .npz file, and the optional array of their labels.
SAVED_WINDOWS_KEY, SAVED_LABELS_KEY = "eeg", "labels"


class WindowLoader:
    """Base: iterate feeds for Polygraphy, or (label, feed) pairs for the report."""

    def labelled(self) -> Iterator[tuple[str, dict[str, np.ndarray]]]:
        raise NotImplementedError

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        return (feed for _, feed in self.labelled())


def feed(window: np.ndarray) -> dict[str, np.ndarray]:
    return {INPUT_NAME: np.ascontiguousarray(window, dtype=np.float32)[None]}


class EdfWindows(WindowLoader):
    def __init__(self, paths: list[str | Path], window_samples: int = WINDOW_SAMPLES, stride_s: float = 60.0,
                 max_windows: int | None = None):
        self.files, self.saved = [], []
        for path in map(Path, paths):
            if path.is_dir():
                self.files += recording_files(path)
            elif path.is_file():
                (self.saved if path.suffix == ".npz" else self.files).append(path)
            else:
                raise FileNotFoundError(f"{path}: no such EDF file or folder")
        if not self.files and not self.saved:
            raise FileNotFoundError(f"no .edf/.bdf files in {', '.join(map(str, paths))}")
        self.window_s = window_samples / TARGET_RATE
        self.stride_s = stride_s
        self.max_windows = max_windows

    def labelled(self):
        for path in self.saved:
            yield from saved_windows(path)
        if self.files:
            for path, window in windows_of_files(self.files, self.window_s, self.stride_s, self.max_windows):
                yield f"{path.name}@{window.start_s:g}s", feed(window.signals)


def saved_windows(path: Path) -> Iterator[tuple[str, dict[str, np.ndarray]]]:
    """The windows of a saved-windows ``.npz`` with their labels (``<file>#<index>`` where it has none)."""
    try:
        with np.load(path, allow_pickle=False) as saved:
            windows = saved[SAVED_WINDOWS_KEY]
            labels = saved[SAVED_LABELS_KEY].tolist() if SAVED_LABELS_KEY in saved else None
    except (OSError, ValueError, KeyError) as exc:
        raise InputError(f"{path}: not a saved-windows file ({SAVED_WINDOWS_KEY!r}: (N, {N_CHANNELS}, samples)): "
                         f"{exc}") from exc
    if windows.ndim != 3 or windows.shape[1] != N_CHANNELS:
        raise InputError(f"{path}: {SAVED_WINDOWS_KEY!r} has shape {windows.shape}, not (N, {N_CHANNELS}, samples)")
    for index, window in enumerate(windows):
        yield (labels[index] if labels else f"{path.name}#{index}"), feed(window)


class SyntheticWindows(WindowLoader):
    def __init__(self, count: int, window_samples: int = WINDOW_SAMPLES, seed: int = 0):
        if count < 1:
            raise UsageError(f"synthetic window count must be >= 1, got {count}")
        self.count, self.samples, self.seed = count, window_samples, seed

    def labelled(self):
        rng = np.random.default_rng(self.seed)
        t = np.arange(self.samples) / TARGET_RATE
        for i in range(self.count):
            rhythm = np.sin(2 * np.pi * rng.uniform(1, 30, (N_CHANNELS, 1)) * t + rng.uniform(0, 2 * np.pi, (N_CHANNELS, 1)))
            window = rhythm + rng.standard_normal((N_CHANNELS, self.samples))
            yield f"synthetic-{i}", feed(window)


class SeizureWindows(WindowLoader):
    """One window of synthetic EEG (background, artefacts and a seizure, as :mod:`brr.data.synthetic` makes
    the training corpus) centred on the seizure: a 60 s window holds all of it and the background around it,
    a shorter one lies within it."""

    LABEL = "synthetic-seizure"

    def __init__(self, window_samples: int = WINDOW_SAMPLES, seed: int = 0):
        self.samples, self.seed = window_samples, seed
        self.plan = plan_recording(seed, 0, max(WINDOW_S, -(-window_samples // TARGET_RATE)), rate=TARGET_RATE,
                                   seizures=1)
        seizure = self.plan.seizures[0]
        middle = round((seizure.start_s + seizure.stop_s) / 2 * TARGET_RATE)
        self.start = min(max(middle - window_samples // 2, 0), self.plan.n_samples - window_samples)

    def seizure_in_window_s(self) -> tuple[float, float]:
        """Where the seizure lies in the window, in seconds from its start (clipped to the window)."""
        seizure, offset = self.plan.seizures[0], self.start / TARGET_RATE
        length = self.samples / TARGET_RATE
        return max(seizure.start_s - offset, 0.0), min(seizure.stop_s - offset, length)

    def labelled(self):
        recording = preprocess_signals(np.concatenate(list(synthesize(self.plan)), axis=-1), TARGET_RATE)
        yield self.LABEL, feed(recording[:, self.start:self.start + self.samples])


class AdversarialWindows(WindowLoader):
    NAMES = ("flat_channels", "electrode_pops_1000uV", "saturated_channels", "all_zero", "pure_60hz")
    RAIL_UV = 3276.7  # a typical 16-bit EDF physical maximum

    def __init__(self, window_samples: int = WINDOW_SAMPLES, seed: int = 0):
        self.samples, self.seed = window_samples, seed

    def raw_microvolts(self) -> dict[str, np.ndarray]:
        rng = np.random.default_rng(self.seed)
        n = self.samples
        t = np.arange(n) / TARGET_RATE
        eeg = 30.0 * rng.standard_normal((N_CHANNELS, n))
        flat = eeg.copy()
        flat[3:9] = 0.0
        pops = eeg.copy()
        for channel in (2, 9, 15):  # a step of 1000 uV decaying over ~0.5 s, then again later
            for start in (n // 4, 3 * n // 4):
                pops[channel, start:] += 1000.0 * np.exp(-(t[: n - start]) / 0.5)
        saturated = eeg.copy()
        saturated[[0, 11]] = np.clip(100.0 * eeg[[0, 11]], -self.RAIL_UV, self.RAIL_UV)
        mains = np.broadcast_to(50.0 * np.sin(2 * np.pi * 60.0 * t), (N_CHANNELS, n))
        windows = (flat, pops, saturated, np.zeros((N_CHANNELS, n)), mains)
        return dict(zip(self.NAMES, windows))

    def labelled(self):
        for name, raw in self.raw_microvolts().items():
            yield name, feed(preprocess_signals(raw, TARGET_RATE))


class ChainedWindows(WindowLoader):
    """Several loaders one after another."""

    def __init__(self, loaders: list[WindowLoader]):
        self.loaders = loaders

    def labelled(self):
        for loader in self.loaders:
            yield from loader.labelled()


# Export verifies every engine on this many seeded synthetic windows and the adversarial suite; calibration
# judges on them too, so that a plan it accepts passes export's verification.
VERIFICATION_SYNTHETIC_WINDOWS = 2


def fixed_windows(window_samples: int = WINDOW_SAMPLES) -> ChainedWindows:
    """The windows every engine is judged on, whatever the data: a seizure (events to agree on) and the
    adversarial suite (values to survive)."""
    return ChainedWindows([SeizureWindows(window_samples), AdversarialWindows(window_samples)])


def verification_windows(window_samples: int = WINDOW_SAMPLES,
                         synthetic: int = VERIFICATION_SYNTHETIC_WINDOWS) -> ChainedWindows:
    """The windows export verifies an engine on."""
    return ChainedWindows([SyntheticWindows(synthetic, window_samples), fixed_windows(window_samples)])

