"""Probe level: each stage of one input compared with the fp32 reference, and the input's verdict.

A stage is ``clean`` within tolerance, ``divergence`` beyond it, ``nonfinite_precision`` where only
the engine goes non-finite and ``nonfinite_fp32`` where the reference does. Two stages are judged by
what is well defined (``brr.diff.compare``): ``laplacian_pe`` by eigenspace, ``adjacency`` by the
selected set, either ``basis_ambiguous`` where two answers are equally correct.
"""

from __future__ import annotations

import numpy as np

from brr.diff.compare import EigenspaceStats, LaplacianSpectra, SelectionStats, TensorStats
from brr.diff.results import NONFINITE_KINDS, InputResult, StageResult
from brr.model import PROBE_NAMES


def compare_outputs(label: str, feed: dict, ref_out, eng_out, spectrum: LaplacianSpectra | None, atol: float,
                    rtol: float, top_k: int | None = None) -> InputResult:
    """Probe level for one input: each stage's statistics and status, and the input's verdict.

    ``spectrum``: the reference Laplacians' ``LaplacianSpectra``, or None;
    ``top_k`` = the adjacency's k, to recognise selections that differ only at near-ties.
    """
    names = [n for n in PROBE_NAMES if n in ref_out and n in eng_out] or [n for n in ref_out if n in eng_out]
    stages: dict[str, StageResult] = {}
    for name in names:
        ref, eng = np.asarray(ref_out[name]), np.asarray(eng_out[name], dtype=np.float32)
        stats = TensorStats()
        stats.add(ref, eng, atol, rtol)
        stage = StageResult(_status(stats), stats)
        if name == "laplacian_pe" and spectrum is not None and stage.status == "divergence":
            stage.eigenspace = EigenspaceStats()
            steps = eng[:, ::spectrum.interval].reshape(len(spectrum.values), *eng.shape[-2:])
            # (an IterationResult has no .get)
            engine_adjacency = eng_out["adjacency"] if "adjacency" in eng_out else None
            stage.eigenspace.add(spectrum, steps, engine_adjacency, atol, rtol)
            stage.status = "basis_ambiguous" if stage.eigenspace.passed else "divergence"
        elif name == "adjacency" and stage.status == "divergence":
            stage.selection = SelectionStats()
            stage.selection.add(ref, eng, atol, rtol,
                                ref_out["edge_weights"] if "edge_weights" in ref_out else None, top_k)
            # Flips at near-ties are as correct as a rotated eigenbasis: ambiguous, not divergent.
            stage.status = ("basis_ambiguous" if stage.selection.tie_ambiguous else
                            "clean" if stage.selection.passed else "divergence")
        stages[name] = stage
    statuses = [s.status for s in stages.values()]
    first_nonfinite = next((n for n, s in stages.items() if s.status in NONFINITE_KINDS), None)
    first_off = next((n for n, s in stages.items() if s.status in ("divergence", "basis_ambiguous")), None)
    if not all(np.isfinite(v).all() for v in feed.values()):
        verdict = "nonfinite_input"
    elif "nonfinite_fp32" in statuses:
        verdict = "nonfinite_fp32"
    elif "nonfinite_precision" in statuses:
        verdict = "nonfinite_precision"
    elif first_off is None:
        verdict = "clean"
    else:
        # Stages after a basis-ambiguous eigendecomposition inherit its (correct) difference.
        verdict = "basis_ambiguous" if stages[first_off].status == "basis_ambiguous" else "divergence"
    return InputResult(label, verdict, first_off, stages, first_nonfinite_stage=first_nonfinite)


def _status(stats: TensorStats) -> str:
    if stats.ref_nonfinite:
        return "nonfinite_fp32"
    if stats.precision_nonfinite:
        return "nonfinite_precision"
    return "clean" if stats.passed else "divergence"
