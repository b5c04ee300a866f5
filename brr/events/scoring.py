"""Score hypothesis events against reference events with ``timescoring`` (SzCORE).

Two views, as SzCORE reports them:
- event-based (``timescoring.scoring.EventScoring``; defaults are SzCORE's:
  30 s start / 60 s end tolerance, any overlap, events split at 300 s and merged
  when < 90 s apart; timescoring works on a 10 Hz grid internally);
- sample-based (``timescoring.scoring.SampleScoring``) on a ``sample_fs`` grid,
  1 Hz by default as in SzCORE.

Per-file results keep raw counts so :func:`aggregate_scores` can sum counts over
files and compute rates once (micro-average), instead of averaging ratios.
Undefined metrics (e.g. sensitivity without reference events) are ``None`` so the
dicts stay JSON-serialisable.
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence

from timescoring.annotations import Annotation
from timescoring.scoring import EventScoring, SampleScoring

from brr.data.annotations import SeizureEvent
from brr.data.preprocess import TARGET_RATE

__all__ = ["aggregate_scores", "score_events"]

SECONDS_PER_DAY = 86400.0


def _annotation(events: Sequence[SeizureEvent], duration_s: float, fs: float) -> Annotation:
    # Clip to the recording and sort: timescoring's neighbour merging assumes order.
    spans = sorted(
        (max(0.0, e.start_s), min(duration_s, e.stop_s)) for e in events if e.start_s < duration_s
    )
    return Annotation([s for s in spans if s[1] > s[0]], fs, int(round(duration_s * fs)))


def _rates(tp: int, fp: int, ref_true: int, duration_s: float) -> dict[str, Any]:
    fn = ref_true - tp
    return {
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "ref_true": ref_true,
        "duration_s": duration_s,
        "sensitivity": tp / ref_true if ref_true else None,
        "precision": tp / (tp + fp) if tp + fp else None,
        "f1": 2 * tp / (2 * tp + fp + fn) if ref_true + fp else None,
        "fp_per_24h": fp / (duration_s / SECONDS_PER_DAY) if duration_s > 0 else None,
    }


def _from_scorer(scorer: EventScoring | SampleScoring) -> dict[str, Any]:
    # Duration as timescoring counts it (its own grid), so a one-file aggregate
    # reproduces timescoring's rates exactly.
    return _rates(int(scorer.tp), int(scorer.fp), int(scorer.refTrue), scorer.numSamples / scorer.fs)


def score_events(
    reference: Sequence[SeizureEvent],
    hypothesis: Sequence[SeizureEvent],
    duration_s: float,
    fs: float = TARGET_RATE,
    event_params: EventScoring.Parameters | None = None,
    sample_fs: int = 1,
) -> dict[str, Any]:
    """Score one recording.

    ``fs`` is the grid the events are rasterised on before timescoring resamples
    them. Returns ``{"duration_s", "event": {...}, "sample": {...}}``; each view has
    tp, fp, fn, ref_true, duration_s, sensitivity, precision, f1, fp_per_24h.
    For the event view the counts are events; for the sample view they are samples
    at ``sample_fs`` (so ``fp_per_24h`` is false-positive samples per day: seconds
    per day at 1 Hz).
    """
    if duration_s <= 0:
        raise ValueError(f"duration_s must be > 0, got {duration_s}")
    ref = _annotation(reference, duration_s, fs)
    hyp = _annotation(hypothesis, duration_s, fs)
    event = EventScoring(ref, hyp, event_params if event_params is not None else EventScoring.Parameters())
    sample = SampleScoring(ref, hyp, fs=sample_fs)
    return {
        "duration_s": float(duration_s),
        "event": _from_scorer(event),
        "sample": {**_from_scorer(sample), "sample_fs": sample_fs},
    }


def aggregate_scores(results: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Micro-average per-file :func:`score_events` results.

    TP, FP, reference positives and durations are summed over files, then the
    rates are computed from the sums.
    """
    results = list(results)
    if not results:
        raise ValueError("no results to aggregate")
    sample_fs = {r["sample"]["sample_fs"] for r in results}
    if len(sample_fs) != 1:
        raise ValueError(f"cannot sum sample counts taken at different rates: {sorted(sample_fs)}")
    out: dict[str, Any] = {"n_files": len(results), "duration_s": sum(r["duration_s"] for r in results)}
    for view in ("event", "sample"):
        out[view] = _rates(
            sum(r[view]["tp"] for r in results),
            sum(r[view]["fp"] for r in results),
            sum(r[view]["ref_true"] for r in results),
            sum(r[view]["duration_s"] for r in results),
        )
    out["sample"]["sample_fs"] = sample_fs.pop()
    return out
