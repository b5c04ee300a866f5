"""Probe level: each stage of one input compared with the fp32 reference, and the input's verdict.

A stage is ``clean`` within tolerance, ``divergence`` beyond it, ``nonfinite_precision`` where only
the engine goes non-finite and ``nonfinite_fp32`` where the reference does. Two stages are judged by
what is well defined (``brr.diff.compare``): ``laplacian_pe`` by eigenspace, ``adjacency`` by the
selected set, either ``basis_ambiguous`` where two answers are equally correct.

The input's verdict judges what is served: where the outputs hold the logits, the input passes when
nothing is non-finite, the events the model's post-processing makes of its logits are fp32's
(``EventAgreement``), and the logits are within tolerance: ``clean``, a stage beyond tolerance inside
it then a warning with its size (``InputResult.warnings``), for localisation, not the verdict. Logits
beyond tolerance with the same events are ``basis_ambiguous`` where the first difference is an
ambiguous eigenbasis (two correct answers, whose effect on the logits the report states), else
``divergence``. Without logits (a probe subset) the first stage off tolerance decides.
"""

from __future__ import annotations

import numpy as np

from brr.diff.compare import EigenspaceStats, EventAgreement, LaplacianSpectra, SelectionStats, TensorStats
from brr.diff.results import InputResult, StageResult
from brr.diff.verdict import Verdict
from brr.events.postprocess import PostprocessConfig
from brr.model import PROBE_NAMES
from brr.model.contract import OUTPUT_NAME


def compare_outputs(label: str, feed: dict, ref_out, eng_out, spectrum: LaplacianSpectra | None, atol: float,
                    rtol: float, top_k: int | None = None, postprocess: PostprocessConfig | None = None
                    ) -> InputResult:
    """Probe level for one input: each stage's statistics and status, and the input's verdict.

    ``spectrum``: the reference Laplacians' ``LaplacianSpectra``, or None;
    ``top_k`` = the adjacency's k, to recognise selections that differ only at near-ties;
    ``postprocess``: the model's post-processing, which turns logits into the events judged (default
    settings when None).
    """
    names = [n for n in PROBE_NAMES if n in ref_out and n in eng_out] or [n for n in ref_out if n in eng_out]
    stages: dict[str, StageResult] = {}
    for name in names:
        ref, eng = np.asarray(ref_out[name]), np.asarray(eng_out[name], dtype=np.float32)
        stats = TensorStats()
        stats.add(ref, eng, atol, rtol)
        stage = StageResult(_status(stats), stats)
        if name == "laplacian_pe" and spectrum is not None and stage.status is Verdict.DIVERGENCE:
            stage.eigenspace = EigenspaceStats()
            steps = eng[:, ::spectrum.interval].reshape(len(spectrum.values), *eng.shape[-2:])
            # (an IterationResult has no .get)
            engine_adjacency = eng_out["adjacency"] if "adjacency" in eng_out else None
            stage.eigenspace.add(spectrum, steps, engine_adjacency, atol, rtol)
            stage.status = Verdict.BASIS_AMBIGUOUS if stage.eigenspace.passed else Verdict.DIVERGENCE
        elif name == "adjacency" and stage.status is Verdict.DIVERGENCE:
            stage.selection = SelectionStats()
            stage.selection.add(ref, eng, atol, rtol,
                                ref_out["edge_weights"] if "edge_weights" in ref_out else None, top_k)
            # Flips at near-ties are as correct as a rotated eigenbasis: ambiguous, not divergent.
            stage.status = (Verdict.BASIS_AMBIGUOUS if stage.selection.tie_ambiguous else
                            Verdict.CLEAN if stage.selection.passed else Verdict.DIVERGENCE)
        stages[name] = stage
    first_nonfinite = next((n for n, s in stages.items() if s.status.nonfinite_kind is not None), None)
    first_off = next((n for n, s in stages.items() if s.status in (Verdict.DIVERGENCE, Verdict.BASIS_AMBIGUOUS)),
                     None)
    events = None
    # Events of per-sample logits, (batch, samples); a net whose output is shaped otherwise has none.
    if OUTPUT_NAME in stages and np.ndim(ref_out[OUTPUT_NAME]) <= 2:
        events = EventAgreement()
        events.add(np.asarray(ref_out[OUTPUT_NAME]), np.asarray(eng_out[OUTPUT_NAME], dtype=np.float32),
                   postprocess or PostprocessConfig())
    verdict = _verdict(feed, stages, first_off, events)
    warnings = [name for name, stage in stages.items() if stage.status is Verdict.DIVERGENCE] \
        if verdict.accepted else []
    return InputResult(label, verdict, first_off, stages, first_nonfinite_stage=first_nonfinite, events=events,
                       warnings=warnings)


def _verdict(feed: dict, stages: dict[str, StageResult], first_off: str | None,
             events: EventAgreement | None) -> Verdict:
    """The input's verdict: its own non-finite values first, then the stages' non-finite ones (fp32's before
    the engine's), then what is served (logits and events) where the outputs hold it, else the first stage
    off tolerance."""
    statuses = {s.status for s in stages.values()}
    if not all(np.isfinite(v).all() for v in feed.values()):
        return Verdict.NONFINITE_INPUT
    for nonfinite in (Verdict.NONFINITE_FP32, Verdict.NONFINITE_PRECISION):
        if nonfinite in statuses:
            return nonfinite
    if events is not None:
        if not events.agree:
            return Verdict.DIVERGENCE
        if stages[OUTPUT_NAME].status is Verdict.CLEAN:
            return Verdict.CLEAN  # a stage beyond tolerance inside is a warning
        # Logits beyond tolerance with the same events: accepted only where an ambiguous eigenbasis (two
        # correct answers) is the first difference, so that the ambiguity is what moved them.
        ambiguous = first_off is not None and stages[first_off].status is Verdict.BASIS_AMBIGUOUS
        return Verdict.BASIS_AMBIGUOUS if ambiguous else Verdict.DIVERGENCE
    if first_off is None:
        return Verdict.CLEAN
    # Stages after a basis-ambiguous eigendecomposition inherit its (correct) difference.
    return stages[first_off].status


def _status(stats: TensorStats) -> Verdict:
    if stats.ref_nonfinite:
        return Verdict.NONFINITE_FP32
    if stats.precision_nonfinite:
        return Verdict.NONFINITE_PRECISION
    return Verdict.CLEAN if stats.passed else Verdict.DIVERGENCE
