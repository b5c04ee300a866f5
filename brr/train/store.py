"""A prepared window store: each recording of a corpus preprocessed once into shards on disk.

Training reads windows at random from every recording of an archive, epoch after epoch. Reading and
filtering the EDFs again each epoch costs more than the training step on a GPU, and holding the
preprocessed corpus in memory stops at the machine's memory; so :func:`prepare_store` preprocesses
each recording once, and :func:`open_store` then serves any window with one read.

Layout of a store folder:

- ``index.json``: the store's format and preprocessing settings, the corpus it was made from, and its
  recordings in sorted source-path order (source path relative to the corpus, content key, sample
  count, sampling rate, seizure events, the seizure sample runs, shard file names), plus the
  recordings that failed with their problem. Written atomically, last.
- ``shards/<key>.signals.npy``: float32 ``(n_samples, 19)``, time-major, so that a window is one
  contiguous byte range of the file.
- ``shards/<key>.labels.npy``: uint8 ``(n_samples,)``, 1 on seizure samples.
- ``shards/<key>.json``: the recording's metadata, written after both arrays: the shard is complete
  exactly when it exists and the arrays have the sizes their headers promise.

The content key of a recording is the SHA-256 of its EDF bytes, its ``.csv_bi`` bytes and the
preprocessing settings (mains frequency, target rate, :data:`PREPROCESSING_VERSION`). Preparing again
reuses every shard whose key is unchanged, rebuilds the others, and removes the shards no recording
uses any more; a killed preparation resumes with what it had finished.

Windows are read with positioned reads into fresh arrays, never through a memory map: the pages of
a mapped file that a process touches count in its resident memory, which would then grow with the
corpus over an epoch. Read this way the reader's memory is its batches and the index alone.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import json
import logging
import multiprocessing
import os
import re
import secrets
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from brr.atomic import atomic_write_text
from brr.data import RecordingError, open_recording
from brr.data.annotations import SeizureEvent, events_to_labels, read_csv_bi_with_duration
from brr.data.preprocess import TARGET_RATE
from brr.data.recording import DEFAULT_BLOCK_S
from brr.errors import InputError
from brr.montage import N_CHANNELS
from brr.output_folder import OutputLock, prepare_output_folder, remove_stale_temporaries

__all__ = ["PREPROCESSING_VERSION", "CorpusError", "FailedRecording", "PrepareResult", "ShardOutcome",
           "StoredRecording", "WindowStore", "find_recordings", "is_store", "open_store", "prepare_store"]

log = logging.getLogger(__name__)

STORE_FORMAT = "brr-window-store"
STORE_VERSION = 1
# Part of every content key: raise it when brr.data's preprocessing changes its output, so that every
# shard is made again instead of mixing old and new preprocessing in one store.
PREPROCESSING_VERSION = 1
INDEX_FILE = "index.json"
SHARDS_DIR = "shards"
RECORDING_SUFFIXES = (".edf", ".bdf")
ANNOTATION_SUFFIX = ".csv_bi"
_SHARD_FILE = re.compile(r"([0-9a-f]{64})\.(signals\.npy|labels\.npy|json)")
_HASH_CHUNK = 1 << 20
_SIGNALS_DTYPE = np.dtype("<f4")
_LABELS_DTYPE = np.dtype("u1")
_ROW_BYTES = N_CHANNELS * _SIGNALS_DTYPE.itemsize  # one sample of every channel


class CorpusError(InputError):
    """A corpus or store that cannot be used; the message names the folder or file."""


class ShardOutcome(enum.Enum):
    PREPARED = "prepared"
    REUSED = "reused"
    FAILED = "failed"


@dataclass(frozen=True)
class FailedRecording:
    source: str  # relative to the corpus folder
    problem: str  # names the file at fault


@dataclass(frozen=True)
class PrepareResult:
    store: Path
    prepared: int
    reused: int
    failed: list[FailedRecording]


@dataclass(frozen=True, eq=False)
class StoredRecording:
    """One recording of a store: its metadata, and reads of its windows and blocks from the shard."""

    source: Path  # the EDF/BDF it was prepared from
    key: str
    n_samples: int
    sampling_rate: int
    events: tuple[SeizureEvent, ...]
    seizure_runs: np.ndarray  # int64 (runs, 2): [start, stop) sample ranges labelled seizure, in order
    signals_path: Path
    labels_path: Path
    signals_offset: int  # bytes of the .npy header
    labels_offset: int

    @property
    def name(self) -> str:
        return self.source.stem

    @property
    def duration_s(self) -> float:
        return self.n_samples / self.sampling_rate

    def read_window(self, start: int, length: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(signals (19, length) float32, labels (length,) float32, valid (length,) bool) from sample
        ``start``; samples past the end are zeros, not valid."""
        n = max(0, min(length, self.n_samples - start))
        rows = np.empty((n, N_CHANNELS), dtype=_SIGNALS_DTYPE)
        _read_exactly(self.signals_path, rows, self.signals_offset + start * _ROW_BYTES)
        seizure = np.empty(n, dtype=_LABELS_DTYPE)
        _read_exactly(self.labels_path, seizure, self.labels_offset + start)
        signals = np.zeros((N_CHANNELS, length), dtype=np.float32)
        signals[:, :n] = rows.T
        labels = np.zeros(length, dtype=np.float32)
        labels[:n] = seizure
        valid = np.zeros(length, dtype=bool)
        valid[:n] = True
        return signals, labels, valid

    def iter_blocks(self, block_s: float = DEFAULT_BLOCK_S) -> Iterator[np.ndarray]:
        """Consecutive float32 ``(19, <= block)`` blocks covering the recording, one in memory at a time
        (as :meth:`brr.data.RecordingStream.iter_blocks`, for :func:`brr.data.iter_windows`)."""
        block = max(1, round(block_s * self.sampling_rate))
        for start in range(0, self.n_samples, block):
            rows = np.empty((min(block, self.n_samples - start), N_CHANNELS), dtype=_SIGNALS_DTYPE)
            _read_exactly(self.signals_path, rows, self.signals_offset + start * _ROW_BYTES)
            yield np.ascontiguousarray(rows.T)


@dataclass(frozen=True)
class WindowStore:
    path: Path
    corpus: Path  # the folder it was prepared from
    mains_hz: float
    recordings: list[StoredRecording]  # sorted by source path
    failed: list[FailedRecording]


def _read_exactly(path: Path, out: np.ndarray, offset: int) -> None:
    """Fill ``out`` from ``path`` at byte ``offset`` with positioned reads (no memory map)."""
    view = memoryview(out).cast("B")
    fd = os.open(path, os.O_RDONLY)
    try:
        done = 0
        while done < len(view):
            got = os.preadv(fd, [view[done:]], offset + done)
            if got == 0:
                raise CorpusError(f"{path}: truncated: ends at byte {offset + done}, a read needs "
                                  f"{offset + len(view)}")
            done += got
    finally:
        os.close(fd)


def find_recordings(corpus_dir: str | os.PathLike) -> list[Path]:
    """Every EDF/BDF under ``corpus_dir`` (recursively, sorted by path)."""
    corpus_dir = Path(corpus_dir)
    if not corpus_dir.is_dir():
        raise CorpusError(f"{corpus_dir}: data folder not found")
    paths = sorted(p for p in corpus_dir.rglob("*")
                   if p.suffix.lower() in RECORDING_SUFFIXES and not p.is_dir())
    if not paths:
        raise CorpusError(f"{corpus_dir}: no .edf or .bdf recordings found")
    return paths


def annotation_path(recording: Path) -> Path:
    return recording.with_suffix(ANNOTATION_SUFFIX)


def read_annotation(recording: Path) -> tuple[SeizureEvent, ...]:
    """The seizure events of ``recording``'s ``.csv_bi``; one missing or invalid is a :class:`CorpusError`."""
    annotation = annotation_path(recording)
    if not annotation.is_file():
        raise CorpusError(f"{recording}: no annotation file {annotation.name} next to it")
    try:
        events, _ = read_csv_bi_with_duration(annotation)
    except (ValueError, OSError) as exc:
        raise CorpusError(f"{annotation}: {exc}") from exc
    return tuple(events)


def preprocessing_settings(mains_hz: float) -> dict[str, Any]:
    return {"version": PREPROCESSING_VERSION, "mains_hz": float(mains_hz), "sampling_rate": TARGET_RATE}


def content_key(recording: Path, mains_hz: float) -> str:
    """SHA-256 of the preprocessing settings, the recording's bytes and its annotation's bytes."""
    digest = hashlib.sha256(json.dumps(preprocessing_settings(mains_hz), sort_keys=True).encode())
    for path in (recording, annotation_path(recording)):
        if not path.is_file():  # a pipe would block the read; a broken link has nothing to read
            raise CorpusError(f"{path}: not a regular file")
        try:
            with open(path, "rb") as fh:
                digest.update(f"\n{os.fstat(fh.fileno()).st_size}\n".encode())
                while chunk := fh.read(_HASH_CHUNK):
                    digest.update(chunk)
        except OSError as exc:
            raise CorpusError(f"{path}: cannot be read ({exc.strerror or exc})") from exc
    return digest.hexdigest()


# --------------------------------------------------------------------------- shards


def _shard_paths(shards: Path, key: str) -> tuple[Path, Path, Path]:
    return shards / f"{key}.signals.npy", shards / f"{key}.labels.npy", shards / f"{key}.json"


def _array_header(path: Path, dtype: np.dtype, shape: tuple[int, ...]) -> int:
    """The data offset of the .npy file ``path``, checked to hold ``dtype`` of ``shape``, whole."""
    try:
        with open(path, "rb") as fh:
            version = np.lib.format.read_magic(fh)
            read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                           else np.lib.format.read_array_header_2_0)
            found_shape, fortran, found_dtype = read_header(fh)
            offset = fh.tell()
            size = os.fstat(fh.fileno()).st_size
    except FileNotFoundError:
        raise CorpusError(f"{path}: shard missing") from None
    except (OSError, ValueError) as exc:
        raise CorpusError(f"{path}: not a readable .npy shard ({exc})") from exc
    if found_shape != shape or fortran or found_dtype != dtype:
        order = " (Fortran order)" if fortran else ""
        raise CorpusError(f"{path}: holds {found_dtype} {found_shape}{order}, the index says {dtype} {shape}")
    expected = offset + int(np.prod(shape)) * dtype.itemsize
    if size != expected:
        raise CorpusError(f"{path}: truncated: its header describes {expected} bytes, the file has {size}")
    return offset


@contextmanager
def _atomic_file(path: Path) -> Iterator[BinaryIO]:
    """A new file written under a temporary name (:mod:`brr.atomic`'s, so that a killed run's is cleaned up)
    and renamed to ``path`` once it is complete and on disk."""
    while True:
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            break
        except FileExistsError:
            continue
    try:
        with os.fdopen(fd, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _seizure_runs(labels: np.ndarray) -> np.ndarray:
    edges = np.flatnonzero(np.diff(labels.astype(np.int8), prepend=0, append=0))
    return edges.reshape(-1, 2).astype(np.int64)


def _write_shard(source: Path, events: tuple[SeizureEvent, ...], shards: Path, key: str,
                 mains_hz: float) -> dict[str, Any]:
    """Preprocess ``source`` block by block into its shard files; returns the shard's metadata."""
    signals_path, labels_path, meta_path = _shard_paths(shards, key)
    with open_recording(source, mains_hz=mains_hz) as stream:
        n_samples = stream.n_samples
        with _atomic_file(signals_path) as fh:
            np.lib.format.write_array_header_1_0(
                fh, {"descr": _SIGNALS_DTYPE.str, "fortran_order": False, "shape": (n_samples, N_CHANNELS)})
            written = 0
            for block in stream.iter_blocks():
                fh.write(np.ascontiguousarray(block.T, dtype=_SIGNALS_DTYPE).data)
                written += block.shape[-1]
            if written != n_samples:
                raise AssertionError(f"{source}: preprocessing gave {written} samples, expected {n_samples}")
    labels = events_to_labels(events, n_samples, TARGET_RATE)
    with _atomic_file(labels_path) as fh:
        np.save(fh, labels, allow_pickle=False)
    meta = {"key": key, "n_samples": n_samples, "sampling_rate": TARGET_RATE,
            "events": [dataclasses.asdict(e) for e in events], "seizure_runs": _seizure_runs(labels).tolist()}
    atomic_write_text(meta_path, json.dumps(meta) + "\n")
    return meta


def _complete_shard(shards: Path, key: str) -> dict[str, Any] | None:
    """The metadata of the shard ``key`` when it is complete and whole, else None (to be made again)."""
    signals_path, labels_path, meta_path = _shard_paths(shards, key)
    try:
        meta = json.loads(meta_path.read_text())
        n_samples = int(meta["n_samples"])
        _array_header(signals_path, _SIGNALS_DTYPE, (n_samples, N_CHANNELS))
        _array_header(labels_path, _LABELS_DTYPE, (n_samples,))
    except FileNotFoundError:
        return None
    except (CorpusError, ValueError, KeyError, TypeError) as exc:
        log.debug(f"{meta_path}: incomplete shard, made again ({exc})")
        return None
    return meta


@dataclass(frozen=True)
class _Outcome:
    source: Path
    kind: ShardOutcome
    meta: dict[str, Any] | None = None
    problem: str | None = None


def _prepare_recording(source: Path, shards: Path, mains_hz: float) -> _Outcome:
    """One recording's shard, reused when its content key has one (runs in a worker process)."""
    try:
        events = read_annotation(source)
        key = content_key(source, mains_hz)
        meta = _complete_shard(shards, key)
        if meta is not None:
            return _Outcome(source, ShardOutcome.REUSED, meta)
        return _Outcome(source, ShardOutcome.PREPARED, _write_shard(source, events, shards, key, mains_hz))
    except (RecordingError, CorpusError) as exc:
        return _Outcome(source, ShardOutcome.FAILED, problem=str(exc))


def _outcomes(sources: list[Path], shards: Path, mains_hz: float, workers: int) -> Iterator[_Outcome]:
    """Each recording's outcome as it finishes: in this process for one worker, else over a process pool."""
    if workers == 1:
        for source in sources:
            yield _prepare_recording(source, shards, mains_hz)
        return
    # Forked, as the DataLoader's workers are: they run numpy, scipy and pyedflib only (no torch, no CUDA),
    # so a training caller's threads are no hazard, while a fresh interpreter (spawn, forkserver) would
    # import torch again and run the caller's main module again, which a script without a main guard
    # cannot survive.
    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("fork")) as pool:
        futures = [pool.submit(_prepare_recording, source, shards, mains_hz) for source in sources]
        try:
            for future in as_completed(futures):
                yield future.result()
        finally:
            for future in futures:
                future.cancel()


def prepare_store(corpus_dir: str | os.PathLike, store_dir: str | os.PathLike, mains_hz: float = 60.0,
                  workers: int = 1, progress: bool = False) -> PrepareResult:
    """Preprocess every EDF/BDF of ``corpus_dir`` (with its ``.csv_bi``) into the store ``store_dir``, over
    ``workers`` processes; reuses the shards whose content key is unchanged (see the module docstring).

    A recording that cannot be prepared (unreadable or unusable EDF, missing or invalid annotation) is
    logged, listed in the result and the index, and left out; the others are prepared. The store folder is
    locked while this runs (:class:`~brr.output_folder.OutputLock`)."""
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    corpus_dir = Path(corpus_dir)
    sources = find_recordings(corpus_dir)
    store_dir = prepare_output_folder(store_dir, "store folder")
    with OutputLock(store_dir, "brr-prepare"):
        remove_stale_temporaries(store_dir)
        shards = store_dir / SHARDS_DIR
        shards.mkdir(exist_ok=True)
        outcomes: dict[Path, _Outcome] = {}
        counts: Counter[ShardOutcome] = Counter()
        with _progress(progress) as bar:
            task = bar.add_task("prepare", total=len(sources), status="")
            for outcome in _outcomes(sources, shards, mains_hz, min(workers, len(sources))):
                outcomes[outcome.source] = outcome
                counts[outcome.kind] += 1
                if outcome.kind is ShardOutcome.FAILED:
                    log.warning(f"{outcome.problem}; left out of the store")
                bar.update(task, advance=1, status=", ".join(f"{counts[k]} {k.value}" for k in ShardOutcome))
        recordings, failed = [], []
        for source in sources:
            outcome, relative = outcomes[source], source.relative_to(corpus_dir).as_posix()
            if outcome.kind is ShardOutcome.FAILED:
                failed.append(FailedRecording(relative, outcome.problem))
                continue
            meta, key = outcome.meta, outcome.meta["key"]
            signals_path, labels_path, _ = _shard_paths(Path(SHARDS_DIR), key)
            recordings.append({"source": relative, "key": key, "n_samples": meta["n_samples"],
                               "sampling_rate": meta["sampling_rate"], "events": meta["events"],
                               "seizure_runs": meta["seizure_runs"], "signals": signals_path.as_posix(),
                               "labels": labels_path.as_posix()})
        index = {"format": STORE_FORMAT, "format_version": STORE_VERSION,
                 "preprocessing": preprocessing_settings(mains_hz), "corpus": str(corpus_dir.resolve()),
                 "recordings": recordings, "failed": [dataclasses.asdict(f) for f in failed]}
        atomic_write_text(store_dir / INDEX_FILE, json.dumps(index, indent=1) + "\n")
        _remove_unused_shards(shards, {r["key"] for r in recordings})
    result = PrepareResult(store_dir, counts[ShardOutcome.PREPARED], counts[ShardOutcome.REUSED], failed)
    log.info(f"{store_dir}: {result.prepared} recording(s) prepared, {result.reused} reused, "
             f"{len(result.failed)} failed")
    return result


def _remove_unused_shards(shards: Path, keys: set[str]) -> None:
    """Delete the shards of recordings that changed or left the corpus: the index no longer names them."""
    for path in shards.iterdir():
        match = _SHARD_FILE.fullmatch(path.name)
        if match and match[1] not in keys:
            path.unlink(missing_ok=True)


def _progress(shown: bool) -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TextColumn("{task.fields[status]}", markup=False), console=Console(stderr=True),
                    disable=not shown)


# --------------------------------------------------------------------------- reading


def is_store(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a store folder (has an index; :func:`open_store` checks the rest)."""
    return (Path(path) / INDEX_FILE).is_file()


def open_store(path: str | os.PathLike) -> WindowStore:
    """The store at ``path``, each shard checked against the index (:class:`CorpusError` names a fault)."""
    path = Path(path)
    index_path = path / INDEX_FILE
    if not path.is_dir():
        raise CorpusError(f"{path}: store folder not found")
    if not index_path.is_file():
        raise CorpusError(f"{path}: not a prepared store (no {INDEX_FILE}); prepare one with brr-prepare")
    try:
        index = json.loads(index_path.read_text(encoding="utf-8"))
        version = (index["format"], index["format_version"])
        preprocessing = index["preprocessing"]
    except (ValueError, KeyError, TypeError) as exc:
        raise CorpusError(f"{index_path}: corrupt store index ({type(exc).__name__}: {exc})") from exc
    if version != (STORE_FORMAT, STORE_VERSION):
        raise CorpusError(f"{index_path}: store format {version}, this brr reads "
                          f"{(STORE_FORMAT, STORE_VERSION)}; prepare the corpus again with brr-prepare")
    if preprocessing.get("version") != PREPROCESSING_VERSION:
        raise CorpusError(f"{index_path}: prepared with preprocessing version {preprocessing.get('version')} "
                          f"but this brr preprocesses as version {PREPROCESSING_VERSION}; prepare it again: "
                          f"brr-prepare {index.get('corpus')} -o {path}")
    try:
        corpus = Path(index["corpus"])
        recordings = [_stored_recording(path, corpus, entry) for entry in index["recordings"]]
        failed = [FailedRecording(str(f["source"]), str(f["problem"])) for f in index["failed"]]
        mains_hz = float(preprocessing["mains_hz"])
    except (ValueError, KeyError, TypeError) as exc:
        raise CorpusError(f"{index_path}: corrupt store index ({type(exc).__name__}: {exc})") from exc
    return WindowStore(path, corpus, mains_hz, recordings, failed)


def _stored_recording(store: Path, corpus: Path, entry: dict[str, Any]) -> StoredRecording:
    n_samples = int(entry["n_samples"])
    signals_path, labels_path = store / entry["signals"], store / entry["labels"]
    runs = np.asarray(entry["seizure_runs"], dtype=np.int64).reshape(-1, 2)
    return StoredRecording(
        source=corpus / entry["source"], key=str(entry["key"]), n_samples=n_samples,
        sampling_rate=int(entry["sampling_rate"]), events=tuple(SeizureEvent(**e) for e in entry["events"]),
        seizure_runs=runs, signals_path=signals_path, labels_path=labels_path,
        signals_offset=_array_header(signals_path, _SIGNALS_DTYPE, (n_samples, N_CHANNELS)),
        labels_offset=_array_header(labels_path, _LABELS_DTYPE, (n_samples,)))

