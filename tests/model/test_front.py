"""The detector's front run once over a recording, its window edges per window: the per-window steps."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from brr.data import Recording
from brr.model import build_detector
from brr.model.front import (
    FrontGeometry,
    OverlapUnavailable,
    overlap_features,
    overlap_windows,
    window_starts,
)
from brr.runtime.windows import model_windows

WINDOW = 15360
STRIDE = 1280  # 5 s: several windows over a short signal
ROUNDING = 1e-5  # fp32 rounding of convolutions over spans of other lengths


def _signal(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((19, n)).astype(np.float32)


def _front(model):
    def front(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return model.forward_front(torch.from_numpy(np.ascontiguousarray(x))).numpy()
    return front


def _per_window(model, signal: np.ndarray, start: int) -> np.ndarray:
    return _front(model)(signal[None, :, start : start + WINDOW])[0]


def _step_error(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The largest difference at each step of two (19, steps, D) feature arrays."""
    return np.abs(a - b).max(axis=(0, 2))


def test_forward_is_the_rest_of_the_front():
    model = build_detector({"base": "v3-small", "window_samples": 1280}).eval()
    x = torch.from_numpy(_signal(1280)[None])
    with torch.inference_mode():
        logits, probes = model(x, return_probes=True)
        electrodes, front_probes = model.forward_front(x, return_probes=True)
        rest_logits, rest_probes = model.forward_rest(electrodes, return_probes=True)
    assert torch.equal(rest_logits, logits)
    assert {**front_probes, **rest_probes}.keys() == probes.keys()
    assert all(torch.equal(value, {**front_probes, **rest_probes}[name]) for name, value in probes.items())


def test_the_receptive_field_follows_the_config():
    torch.manual_seed(0)
    model = build_detector({"base": "v3-small", "tcn_channels": [4, 4, 4], "tcn_kernel": 5}).eval()
    geometry = FrontGeometry.of(model.config)
    assert (geometry.left, geometry.right) == (2 * (1 + 2 + 4), 2 * (1 + 2 + 4))
    x = _signal(1024)
    step, ds = 30, geometry.downsample
    reads = {"first": step * ds - geometry.left, "last": step * ds + ds - 1 + geometry.right}
    for sample, beyond in ((reads["first"], reads["first"] - 1), (reads["last"], reads["last"] + 1)):
        for position, changes in ((sample, True), (beyond, False)):
            bumped = x.copy()
            bumped[:, position] += 50.0
            moved = _step_error(_front(model)(x[None])[0], _front(model)(bumped[None])[0])[step]
            assert (moved > 0) == changes, (position, moved)


@pytest.fixture(scope="module")
def recording():
    """A signal whose windows every 5 s end with one moved back to the recording's end, out of step phase."""
    n = WINDOW + 2 * STRIDE + 37
    starts = window_starts(n, WINDOW, STRIDE)
    assert starts == [0, STRIDE, 2 * STRIDE, n - WINDOW] and (n - WINDOW) % 16
    return _signal(n)


def test_every_step_equals_per_window_inference(small_model, recording):
    windows = list(overlap_features(small_model, recording, STRIDE, chunk_samples=WINDOW))
    assert [w.start for w in windows] == window_starts(recording.shape[-1], WINDOW, STRIDE)
    for window in windows:
        assert _step_error(window.features, _per_window(small_model, recording, window.start)).max() <= ROUNDING


def test_the_edge_spans_are_what_the_window_edges_need(small_model, recording):
    """One step fewer of edge, or a span one step shorter, and a window's edges are not its own."""
    geometry = FrontGeometry.of(small_model.config)
    start, ds = 2 * STRIDE, geometry.downsample
    own = _per_window(small_model, recording, start)
    first, last = geometry.edge_steps
    for short in (replace(geometry, left=geometry.left - ds), replace(geometry, right=geometry.right - ds)):
        assert short.edge_steps != geometry.edge_steps
        windows = {w.start: w for w in overlap_windows(_front(small_model), [recording], recording.shape[-1], short,
                                                       STRIDE, WINDOW)}
        error = _step_error(windows[start].features, own)
        # The step the shorter geometry takes from the shared front reads past the window's edge.
        assert error[first - 1] > 1e-3 if short.left < geometry.left else error[-last] > 1e-3
    span = geometry.edge_span
    edge = _front(small_model)(recording[None, :, start : start + span - ds])[0]
    assert _step_error(edge[:, :first], own[:, :first]).max() > 1e-3
    edge = _front(small_model)(recording[None, :, start : start + span])[0]
    assert _step_error(edge[:, :first], own[:, :first]).max() <= ROUNDING


@pytest.mark.parametrize("chunk, block", [(700, 4000), (WINDOW, 10**6), (10 * WINDOW, 333)])
def test_chunk_and_block_sizes_do_not_change_the_features(small_model, recording, chunk, block):
    geometry = FrontGeometry.of(small_model.config)
    expected = list(overlap_features(small_model, recording, STRIDE, chunk_samples=WINDOW))
    blocks = [recording[:, i : i + block] for i in range(0, recording.shape[-1], block)]
    got = list(overlap_windows(_front(small_model), blocks, recording.shape[-1], geometry, STRIDE, chunk))
    assert [w.start for w in got] == [w.start for w in expected]
    for a, b in zip(got, expected):
        assert a.features.shape == (19, geometry.steps, small_model.config.electrode_dim)
        assert np.abs(a.features - b.features).max() <= ROUNDING


def test_the_front_runs_once_over_the_recording_on_chunks_of_bounded_size(small_model):
    geometry = FrontGeometry.of(small_model.config)
    chunk, stride = 4000, 2560
    n = 5 * WINDOW + 123
    seen: list[int] = []

    def front(x: np.ndarray) -> np.ndarray:
        seen.append(x.shape[-1])
        return _front(small_model)(x)

    starts = [w.start for w in overlap_windows(front, [_signal(n)], n, geometry, stride, chunk)]
    assert starts == window_starts(n, WINDOW, stride) and len(starts) == 26
    assert max(seen) <= max(chunk, WINDOW) + geometry.halo + geometry.right
    # Each sample once, plus the halos, each window's two edge spans and the out-of-phase last window; per
    # window it would be six times.
    edges = 2 * geometry.edge_span * len(starts)
    assert sum(seen) <= n + len(seen) * (geometry.halo + geometry.right) + edges + WINDOW


def test_a_recording_shorter_than_a_window_gets_the_per_window_front(small_model):
    signal = _signal(5000)
    (window,) = overlap_features(small_model, signal, STRIDE, chunk_samples=WINDOW)
    padded = np.zeros((19, WINDOW), dtype=np.float32)
    padded[:, :5000] = signal
    assert window.start == 0 and window.valid.sum() == 5000 and window.valid[:5000].all()
    assert np.array_equal(window.features, _per_window(small_model, padded, 0))


def test_a_stride_off_the_front_steps_is_refused(small_model, recording):
    with pytest.raises(OverlapUnavailable, match="multiple of 16 samples"):
        next(overlap_features(small_model, recording, STRIDE + 8, chunk_samples=WINDOW))


@pytest.mark.parametrize("n", [100, WINDOW, WINDOW + 1, WINDOW + 2560, 3 * WINDOW + 5])
@pytest.mark.parametrize("stride", [1280, 2560, WINDOW])
def test_window_starts_are_brr_infers_windows(n, stride):
    recording = Recording(np.zeros((19, n), dtype=np.float32), None, 256, ())
    assert window_starts(n, WINDOW, stride) == [w.start_sample for w in model_windows(recording, stride / 256)]
