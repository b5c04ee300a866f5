"""Event-level evaluation: stitched per-recording probabilities -> events -> timescoring scores.

Used for validation each epoch and for scoring a checkpoint on a held-out corpus. The optional
threshold tuning picks the hysteresis ``enter`` threshold (``leave`` keeps its gap below it) on the
data it is given, so call it on validation data only and carry the result to the test set.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from brr.data import Recording, iter_windows
from brr.model import load_checkpoint
from brr.model.checkpoint import read_checkpoint_meta
from brr.events.postprocess import PostprocessConfig, probabilities_to_events
from brr.events.probabilities import stitch_windows
from brr.events.scoring import aggregate_scores, score_events
from brr.train.dataset import CorpusEntry, find_corpus, load_recording

ENTER_GRID = tuple(round(x, 2) for x in np.arange(0.30, 0.96, 0.05))


@dataclass
class RecordingProbabilities:
    name: str
    probabilities: np.ndarray  # float32 (n_samples,)
    reference: list  # SeizureEvent
    duration_s: float


@torch.no_grad()
def predict_recording(model: torch.nn.Module, recording: Recording, window_s: float, stride_s: float,
                      batch_size: int, device: torch.device) -> np.ndarray:
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


def predict_corpus(model: torch.nn.Module, entries: list[CorpusEntry], window_s: float, stride_s: float,
                   batch_size: int, device: torch.device, mains_hz: float = 60.0,
                   cache: dict[Path, Recording] | None = None) -> list[RecordingProbabilities]:
    """Probabilities of every recording; ``cache`` (path -> Recording) avoids re-reading small corpora."""
    results = []
    for entry in entries:
        recording = cache.get(entry.recording_path) if cache is not None else None
        if recording is None:
            recording, _ = load_recording(entry, mains_hz)
        probs = predict_recording(model, recording, window_s, stride_s, batch_size, device)
        results.append(RecordingProbabilities(entry.recording_path.stem, probs, list(entry.events),
                                              recording.duration_s))
    return results


def score_probabilities(predictions: list[RecordingProbabilities], postprocess: PostprocessConfig) -> dict[str, Any]:
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


def evaluate_corpus(model: torch.nn.Module, data_dir: str | Path, postprocess: PostprocessConfig,
                    stride_s: float = 30.0, batch_size: int = 4, device: str = "cpu",
                    mains_hz: float = 60.0) -> dict[str, Any]:
    """Score ``model`` on every recording of a held-out corpus folder with a fixed post-processing."""
    entries = find_corpus(data_dir)
    window_s = model.config.window_samples / model.config.sampling_rate
    predictions = predict_corpus(model.to(device), entries, window_s, stride_s, batch_size,
                                 torch.device(device), mains_hz)
    return {"postprocess": dataclasses.asdict(postprocess), **score_probabilities(predictions, postprocess)}


def evaluate_checkpoint(checkpoint_dir: str | Path, data_dir: str | Path, stride_s: float = 30.0,
                        batch_size: int = 4, device: str = "cpu", mains_hz: float = 60.0) -> dict[str, Any]:
    """Score a checkpoint on a held-out corpus with the post-processing chosen on validation
    (saved in its ``config.json`` by training; the default post-processing otherwise)."""
    meta = read_checkpoint_meta(checkpoint_dir)
    postprocess = PostprocessConfig(**meta.get("training", {}).get("postprocess", {}))
    model = load_checkpoint(checkpoint_dir, map_location=device)
    return evaluate_corpus(model, data_dir, postprocess, stride_s, batch_size, device, mains_hz)
