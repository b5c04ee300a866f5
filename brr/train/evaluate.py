"""Event-level evaluation: stitched per-recording probabilities -> events -> timescoring scores.

Used for validation each epoch and for scoring a checkpoint on a held-out corpus. The optional
threshold tuning picks the hysteresis ``enter`` threshold (``leave`` keeps its gap below it) on the
data it is given, so call it on validation data only and carry the result to the test set.
"""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from brr.data import Recording, iter_windows
from brr.events.postprocess import PostprocessConfig, probabilities_to_events
from brr.events.probabilities import stitch_windows
from brr.events.scoring import aggregate_scores, score_events
from brr.machine import cpu_threads
from brr.model import load_checkpoint
from brr.model.checkpoint import read_checkpoint_meta
from brr.train.dataset import find_corpus
from brr.train.store import CorpusError, StoredRecording, WindowStore, is_store, open_store, prepare_store

ENTER_GRID = tuple(round(x, 2) for x in np.arange(0.30, 0.96, 0.05))


@dataclass
class RecordingProbabilities:
    name: str
    probabilities: np.ndarray  # float32 (n_samples,)
    reference: list  # SeizureEvent
    duration_s: float


@torch.no_grad()
def predict_recording(model: torch.nn.Module, recording: Recording | StoredRecording, window_s: float,
                      stride_s: float, batch_size: int, device: torch.device) -> np.ndarray:
    """Per-sample seizure probabilities of a whole recording, overlapping windows averaged."""
    def window_outputs() -> Iterable[tuple[int, np.ndarray, np.ndarray]]:
        batch: list = []
        windows = iter_windows(recording, window_s, stride_s)
        for window in windows:
            batch.append(window)
            if len(batch) == batch_size:
                yield from _run(batch)
                batch = []
        if batch:
            yield from _run(batch)

    def _run(batch: list) -> Iterable[tuple[int, np.ndarray, np.ndarray]]:
        x = torch.from_numpy(np.stack([w.signals for w in batch])).to(device)
        probs = torch.sigmoid(model(x).float()).cpu().numpy()
        for window, p in zip(batch, probs):
            yield round(window.start_s * recording.sampling_rate), p, window.valid

    was_training = model.training
    model.eval()
    try:
        return stitch_windows(window_outputs(), recording.n_samples)
    finally:
        model.train(was_training)


def predict_corpus(model: torch.nn.Module, recordings: Iterable[StoredRecording], window_s: float,
                   stride_s: float, batch_size: int, device: torch.device) -> list[RecordingProbabilities]:
    """Probabilities of every recording, read block by block from its store."""
    return [RecordingProbabilities(r.name, predict_recording(model, r, window_s, stride_s, batch_size,
                                                             device), list(r.events), r.duration_s)
            for r in recordings]


def score_probabilities(predictions: list[RecordingProbabilities],
                        postprocess: PostprocessConfig) -> dict[str, Any]:
    """Aggregated timescoring scores (event and sample views) of the predictions under ``postprocess``."""
    per_file = [
        score_events(p.reference, probabilities_to_events(p.probabilities, postprocess), p.duration_s,
                     fs=postprocess.fs)
        for p in predictions
    ]
    return aggregate_scores(per_file)


def selection_key(scores: dict[str, Any], selection: str, max_fa_per_24h: float) -> tuple:
    """Larger is better. ``f1``: event F1. ``sensitivity_at_fa``: first the candidates that detect
    something within the false-alarm limit, by event sensitivity; when none does, the best event F1.
    (On a short validation set a single false alarm exceeds the limit, so "within the limit" alone
    would prefer a threshold that detects nothing.) Sample-level F1 breaks the remaining ties: a
    small validation set saturates the event scores early, and an untrained model that happens to
    catch every validation event must not beat one whose probabilities actually fit the seizures.
    That tie-break is the key's last element, which the threshold choice leaves out."""
    event, sample = scores["event"], scores["sample"]
    f1 = event["f1"] or 0.0
    sample_f1 = sample["f1"] or 0.0
    if selection == "f1":
        return (f1, sample_f1)
    fa, sensitivity = event["fp_per_24h"], event["sensitivity"] or 0.0
    useful = fa is not None and fa <= max_fa_per_24h and sensitivity > 0
    return (useful, sensitivity if useful else f1, f1, sample_f1)


def tune_enter_threshold(predictions: list[RecordingProbabilities], base: PostprocessConfig,
                         selection: str, max_fa_per_24h: float) -> tuple[PostprocessConfig, dict[str, Any]]:
    """``enter`` from :data:`ENTER_GRID` with the best event-level :func:`selection_key`; ``leave`` keeps its
    distance below ``enter``. Of the thresholds that tie there, the middle one: a validation set is
    small, and the threshold farthest from both ends of the tie is the one that keeps its events on
    data it has not seen (the lowest is a bump away from a false alarm, the highest a seizure's peak
    away from a miss). Sample-level F1 would push the choice to the lower end."""
    gap = base.enter - base.leave
    scored = []
    for enter in sorted(ENTER_GRID):
        candidate = dataclasses.replace(base, enter=enter, leave=max(0.0, enter - gap))
        scores = score_probabilities(predictions, candidate)
        scored.append((selection_key(scores, selection, max_fa_per_24h)[:-1], candidate, scores))
    best_event_key = max(key for key, _, _ in scored)
    tied = [(candidate, scores) for key, candidate, scores in scored if key == best_event_key]
    return tied[(len(tied) - 1) // 2]


@contextmanager
def _scored_store(data_dir: str | Path, mains_hz: float) -> Iterator[WindowStore]:
    """``data_dir`` as a store: itself, or its recordings prepared into a temporary one, every one of them
    (a held-out corpus is scored whole or not at all)."""
    if is_store(data_dir):
        store = open_store(data_dir)
        if store.mains_hz != mains_hz:
            raise CorpusError(f"{store.path}: prepared with a {store.mains_hz} Hz notch, not "
                              f"mains_hz={mains_hz}")
        yield store
        return
    find_corpus(data_dir)  # a missing or unreadable annotation stops here, before any preprocessing
    with tempfile.TemporaryDirectory(prefix="brr-evaluate-") as prepared:
        result = prepare_store(data_dir, prepared, mains_hz, workers=cpu_threads())
        if result.failed:
            raise CorpusError(f"{data_dir}: {len(result.failed)} recording(s) cannot be scored, first "
                              f"{result.failed[0].problem}")
        yield open_store(prepared)


def evaluate_corpus(model: torch.nn.Module, data_dir: str | Path, postprocess: PostprocessConfig,
                    stride_s: float = 30.0, batch_size: int = 4, device: str = "cpu",
                    mains_hz: float = 60.0) -> dict[str, Any]:
    """Score ``model`` on every recording of a held-out store or corpus folder, post-processed as given."""
    window_s = model.config.window_samples / model.config.sampling_rate
    with _scored_store(data_dir, mains_hz) as store:
        predictions = predict_corpus(model.to(device), store.recordings, window_s, stride_s, batch_size,
                                     torch.device(device))
    return {"postprocess": dataclasses.asdict(postprocess), **score_probabilities(predictions, postprocess)}


def evaluate_checkpoint(checkpoint_dir: str | Path, data_dir: str | Path, stride_s: float = 30.0,
                        batch_size: int = 4, device: str = "cpu", mains_hz: float = 60.0) -> dict[str, Any]:
    """Score a checkpoint on a held-out corpus with the post-processing chosen on validation
    (saved in its ``config.json`` by training; the default post-processing otherwise)."""
    meta = read_checkpoint_meta(checkpoint_dir)
    postprocess = PostprocessConfig(**meta.get("training", {}).get("postprocess", {}))
    model = load_checkpoint(checkpoint_dir, map_location=device)
    return evaluate_corpus(model, data_dir, postprocess, stride_s, batch_size, device, mains_hz)
