"""Calibration windows streamed from EDF/BDF recordings in bounded memory.

``EdfBatches`` reads one recording at a time through ``brr.data.open_recording`` / ``iter_windows``
and groups windows into (B, 19, samples) float32 batches; at most one batch and one preprocessing
block are held at once. It is re-iterable (each pass re-opens the files), and iterating it yields feeds
``{"eeg": batch}``; ``arrays()`` yields the bare batches for ONNX Runtime's calibration reader.

``WindowStore`` holds the fp16/bf16 search's windows on disk, with their fp32 reference outputs.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from brr.data import recording_files, windows_of_files
from brr.data.preprocess import TARGET_RATE
from brr.data.recording import RECORDING_SUFFIXES
from brr.errors import UsageError
from brr.model.contract import INPUT_NAME
from brr.montage import N_CHANNELS


def edf_files(paths: list[str | Path]) -> list[Path]:
    """EDF/BDF files of ``paths`` (files, or folders searched recursively), in a stable order."""
    files: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            files += recording_files(path)
        elif path.is_file():
            if path.suffix.lower() not in RECORDING_SUFFIXES:
                raise UsageError(f"{path}: not an EDF/BDF recording (expected {', '.join(RECORDING_SUFFIXES)})")
            files.append(path)
        else:
            raise FileNotFoundError(f"{path}: no such EDF file or folder")
    if not files:
        raise FileNotFoundError(f"no .edf/.bdf recordings in {', '.join(map(str, paths))}")
    return files


class EdfBatches:
    """(B, 19, window_samples) float32 batches of consecutive windows, at most ``max_windows`` in all."""

    def __init__(self, paths: list[str | Path], batch_size: int = 1, window_samples: int = 15360,
                 stride_s: float | None = None, max_windows: int | None = 16):
        if batch_size < 1:
            raise UsageError(f"batch_size must be >= 1, got {batch_size}")
        if max_windows is not None and max_windows < 1:
            raise UsageError(f"max_windows must be >= 1 or None, got {max_windows}")
        self.files = edf_files(paths)
        self.batch_size = batch_size
        self.window_samples = window_samples
        self.window_s = window_samples / TARGET_RATE
        self.stride_s = self.window_s if stride_s is None else stride_s
        self.max_windows = max_windows
        # Set by Polygraphy (CreateConfig / EngineFromNetwork) to the network's input metadata.
        self.input_metadata = None

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.batch_size, N_CHANNELS, self.window_samples

    def windows(self) -> Iterator[np.ndarray]:
        """(19, window_samples) windows, one recording open at a time."""
        for _, window in windows_of_files(self.files, self.window_s, self.stride_s, self.max_windows):
            yield window.signals

    def arrays(self) -> Iterator[np.ndarray]:
        """Full batches only: a calibrator is given the one shape the engine is built for."""
        batch: list[np.ndarray] = []
        for window in self.windows():
            batch.append(window)
            if len(batch) == self.batch_size:
                yield np.ascontiguousarray(np.stack(batch), dtype=np.float32)
                batch = []

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        return ({INPUT_NAME: batch} for batch in self.arrays())


class WindowStore:
    """Calibration windows spilled to disk as the fp32 pass reads them: each window's feed, its fp32
    reference outputs (the probes) and the names of the tensors already non-finite in fp32.

    The search judges every pinned set on these windows many times; holding them in memory would make
    its peak grow with the number of windows (v3-small: 13 MB of probes per window). Here one window
    is loaded at a time. The folder is temporary and removed by ``close``.
    """

    def __init__(self, parent: str | Path | None = None):
        self._directory = tempfile.TemporaryDirectory(prefix="brr-calibration-windows-", dir=parent)
        self.path = Path(self._directory.name)
        self.labels: list[str] = []
        self._feed_names: list[str] = []
        self._output_names: list[str] = []
        self._fp32_nonfinite: list[frozenset[str]] = []

    def add(self, label: str, feed: dict[str, np.ndarray], reference: dict[str, np.ndarray],
            fp32_nonfinite: set[str]) -> None:
        if label in self.labels:
            raise ValueError(f"two calibration windows are labelled {label!r}")
        self._feed_names = self._feed_names or list(feed)
        self._output_names = self._output_names or list(reference)
        index = len(self.labels)
        np.savez(self.path / f"{index}-feed.npz", *(np.asarray(feed[n]) for n in self._feed_names))
        np.savez(self.path / f"{index}-reference.npz", *(np.asarray(reference[n]) for n in self._output_names))
        self.labels.append(label)
        self._fp32_nonfinite.append(frozenset(fp32_nonfinite))

    def __len__(self) -> int:
        return len(self.labels)

    def _load(self, label: str, kind: str, names: list[str]) -> dict[str, np.ndarray]:
        with np.load(self.path / f"{self.labels.index(label)}-{kind}.npz") as arrays:
            return {name: arrays[f"arr_{i}"] for i, name in enumerate(names)}

    def feed(self, label: str) -> dict[str, np.ndarray]:
        return self._load(label, "feed", self._feed_names)

    def reference(self, label: str) -> dict[str, np.ndarray]:
        """The fp32 graph's outputs on the window."""
        return self._load(label, "reference", self._output_names)

    def fp32_nonfinite(self, label: str) -> frozenset[str]:
        """Tensors non-finite already in fp32 on the window (a model defect, not precision)."""
        return self._fp32_nonfinite[self.labels.index(label)]

    def close(self) -> None:
        self._directory.cleanup()
