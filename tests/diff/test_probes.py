"""brr-diff probe level: eigendecomposition judged by eigenspace, top-k by selected set, inputs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from brr.diff.compare import eigenspace_error, eigenvalue_clusters, reference_spectrum
from brr.diff.inputs import AdversarialWindows, SeizureWindows, SyntheticWindows, verification_windows
from brr.diff.probes import compare_outputs
from brr.model.positional_encoding import fix_signs
from brr.montage import CHANNELS

N, K, INTERVAL, CLAMP, SHIFT = 19, 16, 1, 1e-6, 1e-4
ATOL = RTOL = 1e-3


def degenerate_adjacency() -> np.ndarray:
    """Nodes 0-2 joined to everyone, 3-18 only to them: 15 structurally equal nodes, a 15-fold eigenvalue."""
    a = np.zeros((N, N))
    a[:3, :] = a[:, :3] = 0.5
    np.fill_diagonal(a, 0.0)
    return a[None, None]  # (B, T, 19, 19)


def probes(adjacency: np.ndarray, vectors: np.ndarray) -> dict[str, np.ndarray]:
    pe = fix_signs(torch.as_tensor(vectors[..., :K])).numpy()
    return {"adjacency": adjacency.astype(np.float32), "laplacian_pe": pe.reshape(1, 1, N, K).astype(np.float32)}


def test_rotated_basis_of_a_repeated_eigenvalue_is_basis_ambiguous_not_nan_nor_pass():
    adjacency = degenerate_adjacency()
    spectrum = reference_spectrum(adjacency, INTERVAL, CLAMP, SHIFT)
    values, vectors = spectrum.values, spectrum.vectors
    start, stop = max(eigenvalue_clusters(values[0]), key=lambda c: c[1] - c[0])
    cluster = np.arange(start, stop)
    assert len(cluster) > 2 and start < K  # the graph is degenerate as built, inside the kept k
    rotation = np.linalg.qr(np.random.default_rng(0).standard_normal((len(cluster), len(cluster))))[0]
    other = vectors.copy()
    other[0][:, cluster] = vectors[0][:, cluster] @ rotation  # another correct eigenbasis
    spectrum = reference_spectrum(adjacency, INTERVAL, CLAMP, SHIFT)
    result = compare_outputs("degenerate", {"eeg": np.zeros(1)}, probes(adjacency, vectors), probes(adjacency, other),
                             spectrum, ATOL, RTOL)
    stage = result.stages["laplacian_pe"]
    assert not stage.stats.passed  # the raw vectors differ ...
    assert stage.status == "basis_ambiguous" and stage.eigenspace.degenerate_steps == 1  # ... the spaces do not
    assert result.verdict == "basis_ambiguous" and result.first_divergent_stage == "laplacian_pe"
    assert stage.stats.precision_nonfinite == 0 and stage.stats.engine_nonfinite == 0


def test_wrong_eigenvector_is_a_divergence_and_nan_is_nonfinite():
    adjacency = degenerate_adjacency()
    spectrum = reference_spectrum(adjacency, INTERVAL, CLAMP, SHIFT)
    vectors = spectrum.vectors
    wrong = vectors.copy()
    wrong[0][:, [0, -1]] = wrong[0][:, [-1, 0]]  # swaps a kept eigenvector for a discarded one
    result = compare_outputs("wrong", {"eeg": np.zeros(1)}, probes(adjacency, vectors), probes(adjacency, wrong),
                             spectrum, ATOL, RTOL)
    assert result.stages["laplacian_pe"].status == "divergence" and result.verdict == "divergence"
    nan = probes(adjacency, vectors)
    nan["laplacian_pe"][..., 0] = np.nan
    result = compare_outputs("nan", {"eeg": np.zeros(1)}, probes(adjacency, vectors), nan, spectrum, ATOL, RTOL)
    assert result.verdict == "nonfinite_precision"


def test_eigenspace_error_of_a_cluster_cut_by_k():
    values = np.array([0.0, 1.0, 1.0, 2.0])
    vectors = np.eye(4)
    rotated = vectors.copy()
    rotated[:, 1:3] = vectors[:, 1:3] @ np.array([[0.6, -0.8], [0.8, 0.6]])
    assert eigenspace_error(values, vectors, rotated[:, :2]).error < 1e-12  # column 1 still lies in the cluster
    assert eigenspace_error(values, vectors, vectors[:, [0, 3]]).error > 0.9  # column 3 does not


def test_eigenvectors_moved_by_the_engines_own_adjacency_are_explained_and_no_more():
    """Eigenvalues split by ~1e-4..1e-3 (above the cluster gap): an adjacency off by 1e-5, far inside the
    tolerance, turns those eigenvectors by ~2e-2, which Davis-Kahan explains. The same vectors beside an
    adjacency equal to the reference's are unexplained, and so is a wrong vector beside the perturbed one."""
    rng = np.random.default_rng(0)
    split = degenerate_adjacency().copy()
    noise = np.triu(rng.uniform(0, 1e-2, (N, N)), 1)
    split[0, 0, 3:, 3:] += (noise + noise.T)[3:, 3:]
    moved = split + 1e-5 * np.triu(rng.standard_normal((N, N)), 1) * (split > 0)
    moved = np.triu(moved, 1) + np.triu(moved, 1).transpose(0, 1, 3, 2)
    spectrum = reference_spectrum(split, INTERVAL, CLAMP, SHIFT)
    assert np.diff(spectrum.values[0, :K]).min() > 1e-4  # no cluster: every eigenvector is compared alone
    engine_vectors = reference_spectrum(moved, INTERVAL, CLAMP, SHIFT).vectors

    explained = compare_outputs("moved", {"eeg": np.zeros(1)}, probes(split, spectrum.vectors),
                                probes(moved, engine_vectors), spectrum, ATOL, RTOL)
    stage = explained.stages["laplacian_pe"]
    assert explained.stages["adjacency"].status == "clean"
    assert stage.eigenspace.max_projector_err > 10 * ATOL  # the vectors did turn ...
    assert stage.status == "basis_ambiguous" and stage.eigenspace.max_unexplained_err <= ATOL + RTOL  # ... as bounded

    unperturbed = compare_outputs("unperturbed", {"eeg": np.zeros(1)}, probes(split, spectrum.vectors),
                                  probes(split, engine_vectors), spectrum, ATOL, RTOL)
    assert unperturbed.stages["laplacian_pe"].status == "divergence" and unperturbed.verdict == "divergence"
    for judged in (stage, unperturbed.stages["laplacian_pe"]):  # plain JSON types, as the report's schema wants
        assert json.loads(json.dumps(judged.eigenspace.to_dict()))["passed"] is (judged.status == "basis_ambiguous")
    wrong = engine_vectors.copy()
    wrong[0][:, [0, -1]] = wrong[0][:, [-1, 0]]
    swapped = compare_outputs("swapped", {"eeg": np.zeros(1)}, probes(split, spectrum.vectors), probes(moved, wrong),
                              spectrum, ATOL, RTOL)
    assert swapped.stages["laplacian_pe"].status == "divergence"
    nan_adjacency = probes(moved, wrong)
    nan_adjacency["adjacency"][0, 0, 3, 4] = np.nan  # a NaN upstream must not excuse a wrong vector
    hidden = compare_outputs("nan adjacency", {"eeg": np.zeros(1)}, probes(split, spectrum.vectors), nan_adjacency,
                             spectrum, ATOL, RTOL)
    assert hidden.stages["laplacian_pe"].status == "divergence"


def test_topk_adjacency_compared_by_selected_set():
    ref = np.zeros((1, 1, N, N), dtype=np.float32)
    ref[..., 0, 1] = ref[..., 1, 0] = 0.5
    same = ref + 1e-5 * (ref != 0)
    other = np.zeros_like(ref)
    other[..., 0, 2] = other[..., 2, 0] = 0.5
    assert compare_outputs("a", {"eeg": np.zeros(1)}, {"adjacency": ref}, {"adjacency": same}, None, ATOL, RTOL).verdict == "clean"
    result = compare_outputs("b", {"eeg": np.zeros(1)}, {"adjacency": ref}, {"adjacency": other}, None, ATOL, RTOL)
    assert result.verdict == "divergence" and result.stages["adjacency"].selection.mismatched_rows == 3


def test_nonfinite_input_is_kept_apart():
    feed = {"eeg": np.array([np.nan], dtype=np.float32)}
    out = {"logits": np.array([np.nan], dtype=np.float32)}
    assert compare_outputs("x", feed, out, out, None, ATOL, RTOL).verdict == "nonfinite_input"


def test_adversarial_suite_is_fixed_finite_and_in_contract():
    suite = dict(AdversarialWindows(1920).labelled())
    assert list(suite) == list(AdversarialWindows.NAMES)
    for name, feed in suite.items():
        assert feed["eeg"].shape == (1, 19, 1920) and feed["eeg"].dtype == np.float32
        assert np.isfinite(feed["eeg"]).all(), name
    assert np.abs(suite["all_zero"]["eeg"]).max() == 0.0
    assert np.abs(suite["flat_channels"]["eeg"][0, 3:9]).max() < 1e-3
    raw = AdversarialWindows(1920).raw_microvolts()
    assert raw["electrode_pops_1000uV"].max() > 1000 and np.abs(raw["saturated_channels"]).max() == pytest.approx(3276.7)
    again = dict(AdversarialWindows(1920).labelled())
    assert all(np.array_equal(again[k]["eeg"], v["eeg"]) for k, v in suite.items())
    assert len(list(SyntheticWindows(3, 1920))) == 3


@pytest.mark.parametrize("samples", [1920, 15360])
def test_every_engine_is_judged_on_a_seizure(samples):
    # Without it, events would agree only because neither side finds any.
    labels = [label for label, _ in verification_windows(samples).labelled()]
    assert labels == ["synthetic-0", "synthetic-1", SeizureWindows.LABEL, *AdversarialWindows.NAMES]
    seizure = SeizureWindows(samples)
    (_, feed), = seizure.labelled()
    window = feed["eeg"][0]
    assert window.shape == (19, samples) and np.isfinite(window).all()
    start_s, stop_s = seizure.seizure_in_window_s()
    length_s = samples / 256
    if length_s >= 60:  # all of it, with background before and after
        assert 0 < start_s and stop_s < length_s and stop_s - start_s >= 20
        ictal = np.zeros(samples, dtype=bool)
        ictal[round(start_s * 256):round(stop_s * 256)] = True
        # At its focus the discharge (80-180 uV over a 10-20 uV background) is what the window is about.
        focus = window[list(CHANNELS).index(seizure.plan.seizures[0].focus)]
        assert np.sqrt(np.mean(focus[ictal] ** 2)) > 1.5 * np.sqrt(np.mean(focus[~ictal] ** 2))
    else:
        assert (start_s, stop_s) == (0.0, length_s)

def _edge_weights_and_adjacency(weights_by_pair: dict[tuple[int, int], float], k: int = 3):
    """(1, E, 1) reference pair weights and the (1, 1, 19, 19) adjacency the model assembles from them."""
    import torch

    from brr.model import resolve_config
    from brr.model.adjacency import AdjacencyAssembly
    from brr.montage import pair_indices

    # Distinct background weights, 1e-3 apart: no accidental ties beyond the planted one.
    weights = (0.0105 + 0.001 * torch.arange(171, dtype=torch.float32)).reshape(1, 171, 1)
    for e, pair in enumerate(pair_indices()):
        if pair in weights_by_pair:
            weights[0, e, 0] = weights_by_pair[pair]
    adjacency = AdjacencyAssembly(resolve_config({"base": "v3-small", "edge_top_k": k}))(weights)
    return weights.numpy(), adjacency.numpy()


def test_topk_flips_at_near_ties_are_ambiguous_but_real_flips_diverge():
    # Row 0 has a near-tie between its 3rd (0,3) and 4th (0,4) largest weights.
    tied = {(0, 1): 0.9, (0, 2): 0.8, (0, 3): 0.5000, (0, 4): 0.4999}
    weights, reference = _edge_weights_and_adjacency(tied)
    flipped_weights = dict(tied)
    flipped_weights[(0, 3)], flipped_weights[(0, 4)] = 0.4999, 0.5000
    _, flipped = _edge_weights_and_adjacency(flipped_weights)
    feed = {"eeg": np.zeros(1)}
    ambiguous = compare_outputs("tie", feed, {"adjacency": reference, "edge_weights": weights},
                                {"adjacency": flipped}, None, 1e-4, 1e-4, top_k=3)
    assert ambiguous.stages["adjacency"].status == "basis_ambiguous"
    assert ambiguous.verdict == "basis_ambiguous"
    # The same flip where the weights are far apart (0.5 vs 0.3) is a real divergence.
    apart = {(0, 1): 0.9, (0, 2): 0.8, (0, 3): 0.5, (0, 4): 0.3}
    weights, reference = _edge_weights_and_adjacency(apart)
    _, flipped = _edge_weights_and_adjacency({**apart, (0, 3): 0.3, (0, 4): 0.5})
    diverged = compare_outputs("apart", feed, {"adjacency": reference, "edge_weights": weights},
                               {"adjacency": flipped}, None, 1e-4, 1e-4, top_k=3)
    assert diverged.stages["adjacency"].status == "divergence"
    assert diverged.stages["adjacency"].selection.tie_rows == 0
    assert not diverged.stages["adjacency"].selection.values.passed


def _served(logit_level: float, gnn_error: float, samples: int = 60 * 256) -> dict[str, np.ndarray]:
    """Outputs with a 20 s run of logits at ``logit_level`` (a seizure when its probability passes the
    default enter threshold 0.86) and a ``gnn`` stage offset by ``gnn_error``."""
    logits = np.full((1, samples), -4.0, np.float32)
    logits[:, 20 * 256: 40 * 256] = logit_level
    return {"gnn": np.full((1, 8), 1.0 + gnn_error, np.float32), "logits": logits}


def test_verdict_judges_the_served_logits_and_events_and_warns_of_an_inner_stage():
    feed, atol, rtol = {"eeg": np.zeros(1)}, 0.25, 0.05
    reference = _served(1.90, 0.0)  # p = 0.870: one 20 s seizure
    # An inner stage off by 0.5 with the same logits: served outputs right, the stage a warning.
    inner = compare_outputs("inner", feed, reference, _served(1.90, 0.5), None, atol, rtol)
    assert inner.verdict == "clean" and inner.warnings == ["gnn"]
    assert inner.events.agree and inner.events.reference_events == 1 and inner.events.f1 == 1.0
    # Logits within atol (0.17 < 0.25) whose probability falls under the threshold: the seizure is lost.
    lost = compare_outputs("lost", feed, reference, _served(1.73, 0.0), None, atol, rtol)
    assert lost.stages["logits"].status == "clean" and lost.verdict == "divergence" and lost.warnings == []
    assert (lost.events.reference_events, lost.events.matched, lost.events.missed, lost.events.f1) == (1, 0, 1, 0.0)
    # Logits beyond tolerance: divergence whatever the events.
    far = compare_outputs("far", feed, reference, _served(3.0, 0.0), None, atol, rtol)
    assert far.verdict == "divergence" and far.events.agree
