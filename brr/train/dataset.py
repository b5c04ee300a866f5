"""Training windows over a prepared store (:mod:`brr.train.store`), their epoch draw and its loader.

A corpus is a folder (searched recursively) of ``*.edf``/``*.bdf`` files, each with a ``.csv_bi``
of the same stem; training reads it through a store, preparing the folder first when it is not one.
Recordings, not windows, are split into training and validation (seeded), so no seizure is seen
from both sides.

Seizure windows are rare (a few percent of a clinical corpus), so each epoch draws its windows
with replacement: a share ``positive_fraction`` from the windows that contain any seizure sample,
the rest from the others, each uniformly, across all training recordings. The draw depends only on
(seed, epoch). Global batch k of an epoch is draws ``[k*B, (k+1)*B)``; with several processes,
each takes its contiguous part of every global batch, so the stream of global batches does not
depend on the number of processes, and a run resumed on another number continues it exactly.

The window grid is kept as arrays (recording, start, positive): an archive has millions of windows.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from brr.data import count_windows
from brr.data.annotations import SeizureEvent
from brr.data.preprocess import TARGET_RATE
from brr.machine import cpu_threads
from brr.train.settings import SettingsError, TrainSettings
from brr.train.store import (
    INDEX_FILE,
    CorpusError,
    StoredRecording,
    WindowStore,
    find_recordings,
    is_store,
    open_store,
    prepare_store,
    read_annotation,
)

__all__ = ["CorpusEntry", "CorpusError", "TrainingData", "TrainingWindows", "epoch_loader", "find_corpus",
           "load_training_data", "split_corpus", "training_crop_s", "training_store"]

log = logging.getLogger(__name__)

PREPARED_DIR = "prepared"  # where training prepares a corpus folder, under its output folder


@dataclass(frozen=True)
class CorpusEntry:
    recording_path: Path
    annotation_path: Path
    events: tuple[SeizureEvent, ...]


def find_corpus(data_dir: str | Path) -> list[CorpusEntry]:
    """Every EDF/BDF under ``data_dir`` (sorted by path) with its ``.csv_bi`` events; the first recording
    without a readable annotation is a :class:`CorpusError` (a held-out corpus is scored whole or not at
    all)."""
    return [CorpusEntry(path, path.with_suffix(".csv_bi"), read_annotation(path))
            for path in find_recordings(data_dir)]


def split_corpus(store: WindowStore, val_fraction: float,
                 seed: int) -> tuple[list[StoredRecording], list[StoredRecording]]:
    """(train, validation) recordings of ``store``; validation gets round(val_fraction * n), at least one."""
    recordings = store.recordings
    if len(recordings) < 2:
        raise CorpusError(f"{store.path}: need at least 2 recordings to split off validation, "
                          f"found {len(recordings)}")
    n_val = min(len(recordings) - 1, max(1, round(val_fraction * len(recordings))))
    order = np.random.default_rng([seed, 0x5917]).permutation(len(recordings))
    val = sorted(order[:n_val].tolist())
    train = sorted(order[n_val:].tolist())
    return [recordings[i] for i in train], [recordings[i] for i in val]


def _samples(seconds: float, name: str) -> int:
    samples = round(seconds * TARGET_RATE)
    if samples <= 0 or abs(samples - seconds * TARGET_RATE) > 1e-6:
        raise SettingsError(f"{name}={seconds!r} s is not a positive whole number of samples at "
                            f"{TARGET_RATE} Hz")
    return samples


class TrainingWindows(Dataset):
    """The window grid (``window_s`` every ``stride_s``, as :func:`brr.data.iter_windows`) of some recordings
    of a store; item ``i`` is window ``i`` as (signals (19, window) float32, labels (window,) float32,
    valid (window,) bool), the tail past a recording's end zero and not valid."""

    def __init__(self, recordings: Sequence[StoredRecording], window_s: float, stride_s: float):
        self.recordings = list(recordings)
        self.window = _samples(window_s, "window_s")
        self.stride = _samples(stride_s, "stride_s")
        lengths = np.array([r.n_samples for r in self.recordings], dtype=np.int64)
        counts = np.array([count_windows(n, self.window, self.stride) for n in lengths], dtype=np.int64)
        first = np.cumsum(counts) - counts
        self.recording_of = np.repeat(np.arange(len(counts), dtype=np.int32), counts)
        self.starts = (np.arange(counts.sum(), dtype=np.int64) - first[self.recording_of]) * self.stride
        positive = self._touches_seizure(lengths)
        self.positives = np.flatnonzero(positive)
        self.negatives = np.flatnonzero(~positive)

    def _touches_seizure(self, lengths: np.ndarray) -> np.ndarray:
        """Whether each window holds a seizure sample: every recording on one sample axis, the last seizure
        run that starts before a window's end overlaps the window exactly when it ends after its start."""
        offsets = np.cumsum(lengths) - lengths
        runs = np.concatenate([np.empty((0, 2), dtype=np.int64)]
                              + [r.seizure_runs + offset for r, offset in zip(self.recordings, offsets)])
        begin = offsets[self.recording_of] + self.starts
        end = offsets[self.recording_of] + np.minimum(self.starts + self.window, lengths[self.recording_of])
        if len(runs) == 0:
            return np.zeros(len(begin), dtype=bool)
        last = np.searchsorted(runs[:, 0], end, side="left") - 1
        return (last >= 0) & (runs[np.maximum(last, 0), 1] > begin)

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return self.window_arrays(int(index))

    def window_arrays(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Window ``index``: one positioned read of its signals and one of its labels."""
        return self.recordings[self.recording_of[index]].read_window(int(self.starts[index]), self.window)

    def window_labels(self, indices: Sequence[int]) -> list[str]:
        """``<recording>@<start>s`` of each window, to name them in reports."""
        return [f"{self.recordings[self.recording_of[i]].name}@{self.starts[i] / TARGET_RATE:g}s"
                for i in indices]

    def draw_epoch(self, n_windows: int, positive_fraction: float, seed: int, epoch: int) -> np.ndarray:
        """Window indices of one epoch (see the module docstring); depends only on (seed, epoch)."""
        rng = np.random.default_rng([seed, epoch])
        if len(self.positives) == 0 or len(self.negatives) == 0:
            pool = self.positives if len(self.negatives) == 0 else self.negatives
            return rng.choice(pool, size=n_windows, replace=True)
        from_positives = rng.random(n_windows) < positive_fraction
        return np.where(
            from_positives,
            rng.choice(self.positives, size=n_windows, replace=True),
            rng.choice(self.negatives, size=n_windows, replace=True),
        )

    def default_epoch_size(self, positive_fraction: float) -> int:
        """One pass over the negatives plus the oversampled positives that go with them."""
        return max(1, math.ceil(len(self.negatives) / max(1e-9, 1.0 - positive_fraction)))


class _RankBatches(Sampler):
    """This process's part of each global batch of ``drawn``, from global batch ``skip`` on (lists made one
    batch at a time: an epoch of an archive has millions of draws)."""

    def __init__(self, drawn: np.ndarray, batch_size: int, rank: int, world_size: int, skip: int):
        self.drawn, self.batch_size, self.skip = drawn, batch_size, skip
        per_rank = batch_size // world_size
        self.part = slice(rank * per_rank, (rank + 1) * per_rank)

    def __len__(self) -> int:
        return max(0, len(self.drawn) // self.batch_size - self.skip)

    def __iter__(self) -> Iterator[list[int]]:
        for k in range(self.skip, len(self.drawn) // self.batch_size):
            yield self.drawn[k * self.batch_size : (k + 1) * self.batch_size][self.part].tolist()


def _stack(items: list[tuple[np.ndarray, ...]]) -> tuple[torch.Tensor, ...]:
    return tuple(torch.from_numpy(np.stack(column)) for column in zip(*items))


def epoch_loader(windows: TrainingWindows, drawn: np.ndarray, batch_size: int, *, rank: int = 0,
                 world_size: int = 1, skip_batches: int = 0, workers: int = 2,
                 pin_memory: bool = False) -> DataLoader:
    """The (signals, labels, valid) tensor batches of process ``rank`` of ``world_size`` for the epoch's
    ``drawn`` windows: its contiguous ``batch_size / world_size`` part of each global batch of ``batch_size``,
    from global batch ``skip_batches`` on, read by ``workers`` processes (0: in this one) in order."""
    if batch_size % world_size:
        raise SettingsError(f"batch_size={batch_size} is the global batch and must be a multiple of the "
                            f"{world_size} training processes")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not one of the {world_size} processes")
    if len(drawn) % batch_size:
        raise ValueError(f"{len(drawn)} drawn windows are not whole batches of {batch_size}")
    # Its own generator: a loader otherwise draws its workers' base seed from the global RNG, which would
    # shift the dropout masks of a resumed run from those of an uninterrupted one.
    return DataLoader(windows, batch_sampler=_RankBatches(drawn, batch_size, rank, world_size, skip_batches),
                      num_workers=workers, collate_fn=_stack, pin_memory=pin_memory,
                      generator=torch.Generator().manual_seed(0))


def training_crop_s(config, crop_s: float) -> float:
    """The training window length in seconds: the model's window, or a shorter crop it can run on."""
    window_s = config.window_samples / config.sampling_rate
    if crop_s == 0:
        return window_s
    # The positional encoding is recomputed every semi_dynamic_interval downsampled steps.
    granule = config.downsample * config.semi_dynamic_interval
    samples = crop_s * config.sampling_rate
    if crop_s > window_s or abs(samples - round(samples)) > 1e-6 or round(samples) % granule:
        raise SettingsError(
            f"crop_s={crop_s} must be at most the model's {window_s} s window and a multiple of "
            f"{granule / config.sampling_rate} s ({granule} samples: downsample x semi_dynamic_interval)")
    return crop_s


def training_store(settings: TrainSettings, prepare: bool = True) -> WindowStore:
    """The store ``settings.data`` is, or the one its corpus folder is prepared into, ``OUT/prepared``
    (resumable: a later run reuses every unchanged recording). ``prepare`` False opens that store as another
    process prepared it (the other processes of a group wait for the first one's)."""
    if is_store(settings.data):
        store = open_store(settings.data)
    else:
        prepared = Path(settings.out) / PREPARED_DIR
        if prepare:
            log.info(f"[train] {settings.data} is a corpus folder: preparing it into {prepared}")
            result = prepare_store(settings.data, prepared, settings.mains_hz, workers=cpu_threads(),
                                   progress=settings.progress)
            if result.failed:
                log.warning(f"[train] {len(result.failed)} recording(s) left out "
                            f"(see {prepared / INDEX_FILE})")
        store = open_store(prepared)
    if store.mains_hz != settings.mains_hz:
        raise SettingsError(f"mains_hz={settings.mains_hz} but the store {store.path} was prepared with a "
                            f"{store.mains_hz} Hz notch; set mains_hz to {store.mains_hz} or prepare it "
                            "again")
    return store


@dataclass(frozen=True)
class TrainingData:
    store: WindowStore
    train: TrainingWindows
    validation: list[StoredRecording]


def load_training_data(settings: TrainSettings, config, *, prepare: bool = True) -> TrainingData:
    """The training windows (the model ``config``'s window, or ``settings.crop_s``, every
    ``settings.stride_s``) and the validation recordings of ``settings.data`` (see :func:`training_store`
    for ``prepare``)."""
    train_window_s = training_crop_s(config, settings.crop_s)
    val_window_s = config.window_samples / config.sampling_rate
    for key, limit in (("stride_s", train_window_s), ("val_stride_s", val_window_s)):
        if getattr(settings, key) > limit:
            raise SettingsError(f"{key}={getattr(settings, key)} exceeds the {limit} s window it steps over")
    store = training_store(settings, prepare)
    train, validation = split_corpus(store, settings.val_fraction, settings.seed)
    windows = TrainingWindows(train, train_window_s, settings.stride_s)
    log.info(f"[train] {len(train)} training recordings ({len(windows)} windows, {len(windows.positives)} "
             f"with seizure), {len(validation)} validation recordings; store {store.path}")
    return TrainingData(store, windows, validation)
