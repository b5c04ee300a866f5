"""Reduce each (fp32 reference, engine) tensor pair to statistics the moment it arrives.

``TensorStats`` accumulates, over every input it is fed, the counts of non-finite values on each
side, max / mean absolute error, the normwise relative error ||e - r|| / ||r||, the cosine
similarity and the value range of the reference, all on the elements finite on both sides; the
tolerance verdict is Polygraphy's elementwise ``SimpleCompareFunc`` (|e - r| <= atol or
|e - r| <= rtol |r| for every element). Nothing but these numbers is kept, so memory does not grow
with the number of inputs.

Two stages are ill-conditioned by construction and get their own comparators:

- ``laplacian_pe``: eigenvectors are only defined up to sign and, for a repeated eigenvalue, up to
  any rotation of its eigenspace. They are compared by eigenspace projectors over clusters of
  near-equal reference eigenvalues. When the raw vectors differ but every projector agrees, the
  stage is *basis-ambiguous*: both answers are correct, which is neither a pass nor a divergence.
  A projector can only be as exact as its eigenspace is separated from the rest of the spectrum:
  by Davis-Kahan, a Laplacian perturbed by E moves the projector of a cluster separated by ``sep``
  by up to sqrt(2) ||E||_F / (sep - ||E||). E is the engine's own input (the Laplacian of its
  adjacency, which the adjacency stage judges) plus an fp32 solver's rounding; the error within
  that bound is explained, and only the rest is held to the tolerance.
- ``adjacency``: the top-k selection is compared as the set of kept entries per row, the weights on
  the entries both sides kept.

What a user is served is judged apart (``EventAgreement``): the seizure events the model's own
post-processing makes of the engine's logits against those it makes of fp32's, scored with
timescoring's event scoring (SzCORE's parameters) with fp32's events as the reference.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import torch
from polygraphy.comparator import IterationResult
from polygraphy.comparator.compare import SimpleCompareFunc
from polygraphy.logger import G_LOGGER

from brr.events.postprocess import PostprocessConfig, probabilities_to_events
from brr.events.scoring import score_events
from brr.model.positional_encoding import normalised_laplacian
from brr.ops.eigh.compare import eigenspace_projectors

# Eigenvalues closer than this (normalised Laplacian spectra lie in [0, 2]) span one eigenspace:
# fp32 eigensolvers resolve gaps of ~1e-6 only, and vectors across smaller gaps are not comparable.
EIGEN_CLUSTER_GAP = 1e-4
# Backward error of an fp32 symmetric eigensolver on an n x n matrix, per unit of n * ||L||_2:
# Jacobi and Householder-QR solvers both stay within a small multiple of n * eps * ||L||_2.
FP32_EIGENSOLVER_BACKWARD_ERROR = float(np.finfo(np.float32).eps)


@dataclass
class TensorStats:
    """Streaming comparison statistics of one tensor (a stage or an ONNX node output)."""

    elements: int = 0
    ref_nonfinite: int = 0
    engine_nonfinite: int = 0
    # Non-finite in the engine where the reference is finite: what reduced precision caused.
    precision_nonfinite: int = 0
    max_abs_err: float = 0.0
    ref_min: float | None = None
    ref_max: float | None = None
    passed: bool = True
    _finite: int = 0
    _sum_abs: float = 0.0
    _sum_sq_diff: float = 0.0
    _sum_sq_ref: float = 0.0
    _sum_sq_engine: float = 0.0
    _dot: float = 0.0

    def add(self, reference: np.ndarray, engine: np.ndarray, atol: float, rtol: float) -> None:
        """Fold one pair of same-shape arrays into the statistics."""
        if reference.shape != engine.shape:
            raise ValueError(f"shape mismatch: reference {reference.shape} vs engine {engine.shape}")
        r = np.asarray(reference, dtype=np.float64).ravel()
        e = np.asarray(engine, dtype=np.float64).ravel()
        r_ok, e_ok = np.isfinite(r), np.isfinite(e)
        both = r_ok & e_ok
        self.elements += r.size
        self.ref_nonfinite += int(r.size - r_ok.sum())
        self.engine_nonfinite += int(e.size - e_ok.sum())
        self.precision_nonfinite += int((r_ok & ~e_ok).sum())
        if r_ok.any():
            finite_r = r[r_ok]
            low, high = float(finite_r.min()), float(finite_r.max())
            self.ref_min = low if self.ref_min is None else min(self.ref_min, low)
            self.ref_max = high if self.ref_max is None else max(self.ref_max, high)
        rb, eb = r[both], e[both]
        diff = np.abs(eb - rb)
        self._finite += int(both.sum())
        if diff.size:
            self.max_abs_err = max(self.max_abs_err, float(diff.max()))
        self._sum_abs += float(diff.sum())
        self._sum_sq_diff += float(np.dot(diff, diff))
        self._sum_sq_ref += float(np.dot(rb, rb))
        self._sum_sq_engine += float(np.dot(eb, eb))
        self._dot += float(np.dot(rb, eb))
        self.passed = self.passed and within_tolerance(rb, eb, atol, rtol) and bool((r_ok == e_ok).all())

    def merge(self, other: TensorStats) -> None:
        """Fold in the statistics of the same tensor on other inputs."""
        self.passed = self.passed and other.passed
        self.max_abs_err = max(self.max_abs_err, other.max_abs_err)
        if other.ref_min is not None:
            self.ref_min = other.ref_min if self.ref_min is None else min(self.ref_min, other.ref_min)
            self.ref_max = other.ref_max if self.ref_max is None else max(self.ref_max, other.ref_max)
        for name in ("elements", "ref_nonfinite", "engine_nonfinite", "precision_nonfinite", "_finite", "_sum_abs",
                     "_sum_sq_diff", "_sum_sq_ref", "_sum_sq_engine", "_dot"):
            setattr(self, name, getattr(self, name) + getattr(other, name))

    @property
    def finite_pairs(self) -> int:
        """Elements finite in both, over which the errors are taken."""
        return self._finite

    @property
    def mean_abs_err(self) -> float:
        return self._sum_abs / self._finite if self._finite else 0.0

    @property
    def rel_err(self) -> float:
        """||e - r|| / ||r|| over the elements finite on both sides (0 when both are all zero)."""
        if self._sum_sq_ref == 0.0:
            return 0.0 if self._sum_sq_diff == 0.0 else float("inf")
        return float(np.sqrt(self._sum_sq_diff / self._sum_sq_ref))

    @property
    def cosine(self) -> float:
        norms = np.sqrt(self._sum_sq_ref * self._sum_sq_engine)
        if norms == 0.0:
            return 1.0 if self._sum_sq_ref == self._sum_sq_engine else 0.0
        return float(self._dot / norms)

    def to_dict(self) -> dict:
        public = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if not f.name.startswith("_")}
        return public | {"mean_abs_err": self.mean_abs_err, "rel_err": self.rel_err, "cosine": self.cosine}


@dataclass
class EventAgreement:
    """The engine's seizure events against fp32's over the inputs fed: they agree when every fp32 event is
    matched and no engine event is extra (event F1 of engine vs fp32 = 1.0; 1.0 too when neither finds any)."""

    reference_events: int = 0
    engine_events: int = 0
    matched: int = 0  # fp32 events the engine also found (timescoring's true positives)
    extra: int = 0  # engine events fp32 does not have (its false positives)
    # Largest start or stop difference of events paired in order, where both found as many.
    max_boundary_shift_s: float = 0.0
    windows: int = 0

    def add(self, reference_logits: np.ndarray, engine_logits: np.ndarray, postprocess: PostprocessConfig) -> None:
        """One input's logits, (batch, samples) or (samples,); non-finite logits are the verdict's, not this."""
        for ref_row, eng_row in zip(np.atleast_2d(reference_logits), np.atleast_2d(engine_logits)):
            if not (np.isfinite(ref_row).all() and np.isfinite(eng_row).all()):
                continue
            ref = probabilities_to_events(_sigmoid(ref_row), postprocess)
            eng = probabilities_to_events(_sigmoid(eng_row), postprocess)
            scores = score_events(ref, eng, len(ref_row) / postprocess.fs, postprocess.fs)["event"]
            self.reference_events += len(ref)
            self.engine_events += len(eng)
            self.matched += scores["tp"]
            self.extra += scores["fp"]
            if len(ref) == len(eng):
                shifts = [max(abs(a.start_s - b.start_s), abs(a.stop_s - b.stop_s)) for a, b in zip(ref, eng)]
                self.max_boundary_shift_s = max([self.max_boundary_shift_s, *shifts])
            self.windows += 1

    def merge(self, other: EventAgreement) -> None:
        for name in ("reference_events", "engine_events", "matched", "extra", "windows"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.max_boundary_shift_s = max(self.max_boundary_shift_s, other.max_boundary_shift_s)

    @property
    def missed(self) -> int:
        return self.reference_events - self.matched

    @property
    def f1(self) -> float:
        if self.reference_events == 0 and self.extra == 0:
            return 1.0
        return 2 * self.matched / (2 * self.matched + self.extra + self.missed)

    @property
    def agree(self) -> bool:
        return self.missed == 0 and self.extra == 0

    def describe(self) -> str:
        return (f"event F1 vs fp32 {self.f1:.3g} ({self.reference_events} fp32 events, {self.matched} matched, "
                f"{self.extra} extra, {self.windows} windows; boundaries within {self.max_boundary_shift_s:.2g} s)")

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "missed": self.missed, "f1": self.f1, "agree": self.agree}


def _sigmoid(logits: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(np.asarray(logits, dtype=np.float64), -60.0, 60.0)))


def within_tolerance(reference: np.ndarray, engine: np.ndarray, atol: float, rtol: float) -> bool:
    """Polygraphy's elementwise verdict on two finite arrays of the same shape."""
    if reference.size == 0:
        return True
    compare = SimpleCompareFunc(atol=atol, rtol=rtol, check_error_stat="elemwise", check_shapes=True)
    # Used as a function: its own report of a failed comparison is the caller's to make, not Polygraphy's.
    with G_LOGGER.verbosity(G_LOGGER.CRITICAL):
        results = compare(IterationResult({"t": engine}, runner_name="engine"),
                          IterationResult({"t": reference}, runner_name="reference"))
    return bool(results["t"])


# ----------------------------------------------------------------------------- eigendecomposition
def eigenvalue_clusters(values: np.ndarray, gap: float = EIGEN_CLUSTER_GAP) -> list[tuple[int, int]]:
    """[start, stop) index ranges of ascending eigenvalues whose neighbours are closer than ``gap``."""
    clusters, start = [], 0
    for i in range(1, len(values) + 1):
        if i == len(values) or values[i] - values[i - 1] > gap:
            clusters.append((start, i))
            start = i
    return clusters


class EigenspaceError(NamedTuple):
    """Of the k returned columns of one decomposition: the largest eigenspace disagreement, what of it
    the perturbation bound does not explain, and whether a cluster holds more than one vector."""

    error: float
    unexplained: float
    degenerate: bool
    # The cluster with the largest error: its column range, eigenvalues and distance to the rest.
    cluster: tuple[int, int] = (0, 0)
    cluster_values: tuple[float, float] = (0.0, 0.0)
    separation: float = float("inf")


def eigenspace_error(ref_values: np.ndarray, ref_vectors: np.ndarray, engine_vectors: np.ndarray,
                     gap: float = EIGEN_CLUSTER_GAP, perturbation: float = 0.0) -> EigenspaceError:
    """Eigenspace disagreement of the k returned columns with the reference's.

    ``ref_vectors`` holds all n eigenvectors, ``engine_vectors`` the first k. A cluster wholly inside
    the k is compared by projector (Frobenius norm of the difference). A cluster cut by the k-th
    column is only defined as a whole, so the engine's columns from it must lie inside its span.
    ``perturbation`` bounds ||E||_F of the matrix the engine decomposed minus the reference's; each
    cluster's error beyond sqrt(2) ||E||_F / (sep - ||E||), sep its distance to the rest of the
    spectrum, is unexplained.
    """
    k = engine_vectors.shape[-1]
    # Projectors of the clusters inside the k returned columns, both sides clustered by the reference values.
    p_ref = eigenspace_projectors(ref_values[:k], ref_vectors[:, :k], gap)
    p_eng = eigenspace_projectors(ref_values[:k], engine_vectors, gap)
    worst, unexplained, degenerate, where = 0.0, 0.0, False, ((0, 0), (0.0, 0.0), float("inf"))
    for a, b in eigenvalue_clusters(ref_values, gap):
        if a >= k:
            break
        degenerate = degenerate or b - a > 1
        if b <= k:
            err = float(np.linalg.norm(p_ref[a] - p_eng[a]))
        else:
            span = ref_vectors[:, a:b]
            part = engine_vectors[:, a:k]
            err = float(np.linalg.norm(part - span @ (span.T @ part)))
        separation = min(ref_values[a] - ref_values[a - 1] if a > 0 else np.inf,
                         ref_values[b] - ref_values[b - 1] if b < len(ref_values) else np.inf)
        bound = np.sqrt(2.0) * perturbation / (separation - perturbation) if separation > perturbation else np.inf
        if err > worst:
            where = ((a, b), (float(ref_values[a]), float(ref_values[b - 1])), float(separation))
        worst, unexplained = max(worst, err), max(unexplained, float(err - bound))
    return EigenspaceError(worst, unexplained, degenerate, *where)


@dataclass
class EigenspaceStats:
    """Eigenvector comparison of ``laplacian_pe`` by eigenspace, beside its raw ``TensorStats``."""

    max_projector_err: float = 0.0
    # The largest projector error beyond its Davis-Kahan bound: what the tolerance judges.
    max_unexplained_err: float = 0.0
    degenerate_steps: int = 0
    steps: int = 0
    passed: bool = True
    # Where the largest projector error is: the eigenvalue cluster (columns [start, stop) of the reference's
    # ascending spectrum, their eigenvalues), its gap to the rest of the spectrum, and ||E||_F of the
    # engine's Laplacian minus the reference's at that step.
    worst_cluster: list[int] = field(default_factory=lambda: [0, 0])
    worst_cluster_values: list[float] = field(default_factory=lambda: [0.0, 0.0])
    worst_cluster_gap: float | None = None
    worst_perturbation: float = 0.0

    def add(self, spectra: LaplacianSpectra, engine_pe: np.ndarray, engine_adjacency: np.ndarray | None,
            atol: float, rtol: float) -> None:
        """``engine_pe`` (N, n, k) at the spectra's steps; ``engine_adjacency`` (B, T, n, n), when the engine
        has that probe, perturbs each bound by how far the engine's Laplacian is from the reference's."""
        perturbations = spectra.perturbations(engine_adjacency)
        for values, vectors, pe, perturbation in zip(spectra.values, spectra.vectors, engine_pe, perturbations):
            if not np.isfinite(pe).all():
                self.passed = False
                continue
            err = eigenspace_error(values, vectors, pe.astype(np.float64), perturbation=perturbation)
            if err.error > self.max_projector_err:
                self.worst_cluster, self.worst_cluster_values = list(err.cluster), list(err.cluster_values)
                self.worst_cluster_gap = err.separation if np.isfinite(err.separation) else None
                self.worst_perturbation = float(perturbation)
            self.steps += 1
            self.degenerate_steps += int(err.degenerate)
            self.max_projector_err = max(self.max_projector_err, err.error)
            self.max_unexplained_err = max(self.max_unexplained_err, err.unexplained)
        # Projector entries are O(1): the same tolerance as an element of an O(1) tensor.
        self.passed = bool(self.passed and self.max_unexplained_err <= atol + rtol)

    def describe(self) -> str:
        """The ambiguity, measured: which eigenvalues, their gap, the engine's perturbation."""
        start, stop = self.worst_cluster
        low, high = self.worst_cluster_values
        values = f"{low:.4g}" if stop - start == 1 else f"{low:.4g}..{high:.4g}"
        gap = "none (the whole spectrum)" if self.worst_cluster_gap is None else f"{self.worst_cluster_gap:.2g}"
        return (f"eigenvalues {start}..{stop - 1} ({stop - start}-fold cluster at {values}) separated from the "
                f"rest by {gap}; the engine's Laplacian differs by ||E||_F {self.worst_perturbation:.2g}; "
                f"eigenspace error {self.max_projector_err:.2g}, {max(self.max_unexplained_err, 0.0):.2g} of it "
                f"beyond the Davis-Kahan bound")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# ----------------------------------------------------------------------------- top-k selection
@dataclass
class SelectionStats:
    """Top-k adjacency compared by the set of entries each row kept.

    Given the reference's edge weights and k, a row whose k-th and (k+1)-th largest weights lie
    within the tolerance of each other is a near-tie: either selection is correct at that precision.
    An entry kept by one side only is *tie-explained* when row i or row j is such a near-tie (the
    symmetrisation keeps (i, j) when either row chose it).
    """

    rows: int = 0
    mismatched_rows: int = 0
    unexplained_rows: int = 0
    tie_rows: int = 0  # rows touching a near-tie, whose kept values are not compared
    values: TensorStats = field(default_factory=TensorStats)

    def add(self, reference: np.ndarray, engine: np.ndarray, atol: float, rtol: float,
            edge_weights: np.ndarray | None = None, top_k: int | None = None) -> None:
        """reference/engine (..., n, n) adjacency; values compared where both kept the entry.

        edge_weights: the reference's (B, E, T) pair weights for the same (B, T, n, n) adjacency.
        """
        r_kept, e_kept = reference != 0, engine != 0
        self.rows += int(np.prod(reference.shape[:-1]))
        mismatch = r_kept != e_kept
        self.mismatched_rows += int(mismatch.any(-1).sum())
        explained = np.zeros_like(mismatch)
        if edge_weights is not None and top_k is not None:
            n = reference.shape[-1]
            dense = np.zeros(reference.shape, dtype=np.float64)
            rows, cols = np.triu_indices(n, k=1)
            pairs = np.asarray(edge_weights, dtype=np.float64).transpose(0, 2, 1)  # (B, T, E)
            dense[..., rows, cols] = pairs
            dense[..., cols, rows] = pairs
            ranked = -np.sort(-dense, axis=-1)
            kth, next_ = ranked[..., top_k - 1], ranked[..., top_k]
            near_tie = (kth - next_) <= atol + rtol * np.abs(kth)  # (..., n)
            explained = near_tie[..., :, None] | near_tie[..., None, :]
        self.unexplained_rows += int((mismatch & ~explained).any(-1).sum())
        self.tie_rows += int((explained & ~np.eye(reference.shape[-1], dtype=bool)).any(-1).sum())
        # A flip in one row also changes the symmetrised value of entries both sides keep, so entries
        # touching a near-tie row are judged by selection only (their weights were compared upstream).
        both = r_kept & e_kept & ~explained
        self.values.add(np.where(both, reference, 0.0), np.where(both, engine, 0.0), atol, rtol)

    @property
    def passed(self) -> bool:
        return self.unexplained_rows == 0 and self.values.passed

    @property
    def tie_ambiguous(self) -> bool:
        """Selections (or the values they symmetrise to) differ, but only at near-ties: two correct answers."""
        return self.passed and (self.mismatched_rows > 0 or self.tie_rows > 0)

    def to_dict(self) -> dict:
        return {"rows": self.rows, "mismatched_rows": self.mismatched_rows,
                "unexplained_rows": self.unexplained_rows, "tie_rows": self.tie_rows, "passed": self.passed,
                "kept_values": self.values.to_dict()}


@dataclass(frozen=True)
class LaplacianSpectra:
    """The reference Laplacians the PE is taken from, every ``interval``-th step, and their spectra."""

    laplacians: np.ndarray  # (N, n, n) float64
    values: np.ndarray  # (N, n) ascending
    vectors: np.ndarray  # (N, n, n), column j belongs to values[:, j]
    interval: int
    degree_clamp: float
    shift: float

    def perturbations(self, engine_adjacency: np.ndarray | None) -> np.ndarray:
        """Per step, a bound on ||E||_F for the matrix an fp32 engine decomposed: its own Laplacian's
        distance to the reference's (when its adjacency is given) plus the solver's backward error."""
        n = self.laplacians.shape[-1]
        solver = FP32_EIGENSOLVER_BACKWARD_ERROR * n * np.abs(self.values).max(axis=-1)
        if engine_adjacency is None:
            return solver
        engine = _sampled_laplacians(engine_adjacency, self.interval, self.degree_clamp, self.shift)
        moved = np.linalg.norm(engine - self.laplacians, axis=(-2, -1))
        # A non-finite adjacency explains nothing (its own stage reports it); NaN would silence the bound.
        return solver + np.where(np.isfinite(moved), moved, 0.0)


def _sampled_laplacians(adjacency: np.ndarray, interval: int, degree_clamp: float, shift: float) -> np.ndarray:
    sampled = torch.as_tensor(np.asarray(adjacency, dtype=np.float64)[:, ::interval])
    n = adjacency.shape[-1]
    return normalised_laplacian(sampled, degree_clamp, shift).reshape(-1, n, n).numpy()


def reference_spectrum(adjacency: np.ndarray, interval: int, degree_clamp: float, shift: float) -> LaplacianSpectra:
    """The Laplacians, eigenvalues (N, n) and eigenvectors (N, n, n), in float64, the PE is taken from.

    ``adjacency`` is the reference's (B, T, n, n) probe; like the model, only every ``interval``-th
    step is decomposed, so N = B * T / interval.
    """
    laplacians = _sampled_laplacians(adjacency, interval, degree_clamp, shift)
    values, vectors = np.linalg.eigh(laplacians)
    return LaplacianSpectra(laplacians, values, vectors, interval, degree_clamp, shift)
