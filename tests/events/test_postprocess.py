import numpy as np
import pytest

from brr.data.annotations import SeizureEvent
from brr.events.postprocess import PostprocessConfig, hysteresis, probabilities_to_events
from brr.events.probabilities import (
    Stitcher,
    downsample_probabilities,
    load_probabilities_npz,
    save_probabilities_npz,
    stitch_windows,
)

FS = 256
BG = 0.1


def trace(seconds, segments, fs=FS):
    """Background trace with (start_sample, stop_sample, value) segments."""
    p = np.full(int(seconds * fs), BG, dtype=np.float32)
    for a, b, v in segments:
        p[a:b] = v
    return p


def spans(events):
    return [(e.start_s, e.stop_s) for e in events]


def test_config_defaults_and_validation():
    cfg = PostprocessConfig()
    assert (cfg.enter, cfg.leave, cfg.opening_samples, cfg.closing_samples) == (0.86, 0.78, 11, 31)
    assert (cfg.min_duration_s, cfg.max_duration_s, cfg.merge_gap_s, cfg.fs) == (3, 600, 2, 256)
    with pytest.raises(ValueError):
        PostprocessConfig(enter=0.7, leave=0.8)
    with pytest.raises(ValueError):
        PostprocessConfig(min_duration_s=10, max_duration_s=5)


def test_hysteresis_thresholds():
    p = np.array([0.5, 0.8, 0.87, 0.8, 0.78, 0.77, 0.85, 0.86, 0.78, 0.5, 0.9], dtype=np.float32)
    got = hysteresis(p, enter=0.86, leave=0.78)
    assert got.astype(int).tolist() == [0, 0, 1, 1, 1, 0, 0, 1, 1, 0, 1]
    assert not hysteresis(np.full(10, 0.85), 0.86, 0.78).any()
    # Same decisions at float16 precision.
    assert hysteresis(p.astype(np.float16), 0.86, 0.78).astype(int).tolist() == got.astype(int).tolist()


def test_hysteresis_onset_and_tail_in_events():
    # 0.8 before the event never enters; after entering, 0.8 keeps it on.
    p = trace(40, [(5 * FS, 10 * FS, 0.8), (10 * FS, 15 * FS, 0.95), (15 * FS, 20 * FS, 0.8)])
    (ev,) = probabilities_to_events(p)
    assert spans([ev]) == [(10.0, 20.0)]
    assert ev.confidence == pytest.approx((0.95 + 0.8) / 2, abs=1e-6)


def test_opening_removes_short_spikes():
    # Spike of 5 samples 1.5 s after the event: without opening it would be merged
    # into the event (gap < 2 s).
    spike = 51 * FS + FS // 2
    p = trace(80, [(40 * FS, 50 * FS, 0.95), (spike, spike + 5, 0.99)])
    assert spans(probabilities_to_events(p)) == [(40.0, 50.0)]
    no_opening = PostprocessConfig(opening_samples=1)
    assert spans(probabilities_to_events(p, no_opening)) == [(40.0, (spike + 5) / FS)]
    # A 20-sample isolated spike survives the opening but is far too short.
    assert probabilities_to_events(trace(80, [(10 * FS, 10 * FS + 20, 0.99)])) == []


def test_closing_fills_short_gaps_only():
    cfg = PostprocessConfig(merge_gap_s=0.0)  # isolate the closing from the merging
    gap20 = trace(100, [(60 * FS, 70 * FS, 0.95), (65 * FS, 65 * FS + 20, 0.1)])
    (ev,) = probabilities_to_events(gap20, cfg)
    assert spans([ev]) == [(60.0, 70.0)]
    assert ev.confidence == pytest.approx(gap20[60 * FS : 70 * FS].mean(), abs=1e-6)
    assert len(probabilities_to_events(gap20, PostprocessConfig(merge_gap_s=0.0, closing_samples=1))) == 2
    gap40 = trace(100, [(60 * FS, 70 * FS, 0.95), (65 * FS, 65 * FS + 40, 0.1)])
    assert spans(probabilities_to_events(gap40, cfg)) == [(60.0, 65.0), (65 + 40 / FS, 70.0)]


def test_merge_events_closer_than_gap():
    p = trace(100, [(10 * FS, 15 * FS, 0.95), (16 * FS, 21 * FS, 0.9), (40 * FS, 45 * FS, 0.95)])
    p[48 * FS : 53 * FS] = 0.95
    events = probabilities_to_events(p)
    assert spans(events) == [(10.0, 21.0), (40.0, 45.0), (48.0, 53.0)]
    expected_conf = (5 * 0.95 + 1 * BG + 5 * 0.9) / 11
    assert events[0].confidence == pytest.approx(expected_conf, abs=1e-6)


def test_duration_filter_after_merge():
    p = trace(
        900,
        [
            (10 * FS, 12 * FS, 0.95),  # 2 s: dropped
            (30 * FS, 33 * FS, 0.95),  # 3 s: kept
            (50 * FS, 52 * FS, 0.95),  # 2 s + 1 s gap + 2 s -> 5 s merged: kept
            (53 * FS, 55 * FS, 0.95),
            (100 * FS, 702 * FS, 0.95),  # 602 s: dropped
            (800 * FS, 810 * FS, 0.95),
        ],
    )
    assert spans(probabilities_to_events(p)) == [(30.0, 33.0), (50.0, 55.0), (800.0, 810.0)]


def test_events_at_recording_edges_are_not_eroded():
    p = trace(30, [(0, 5 * FS, 0.95), (25 * FS, 30 * FS, 0.95)])
    assert spans(probabilities_to_events(p)) == [(0.0, 5.0), (25.0, 30.0)]


def test_float16_input_and_bad_input():
    p = trace(30, [(10 * FS, 20 * FS, 0.95)]).astype(np.float16)
    assert spans(probabilities_to_events(p)) == [(10.0, 20.0)]
    assert probabilities_to_events(np.zeros(0, dtype=np.float32)) == []
    with pytest.raises(ValueError):
        probabilities_to_events(np.array([0.1, np.nan]))
    with pytest.raises(ValueError):
        probabilities_to_events(np.zeros((2, 3)))


def test_events_are_seizure_events():
    (ev,) = probabilities_to_events(trace(30, [(10 * FS, 20 * FS, 0.95)]))
    assert isinstance(ev, SeizureEvent) and ev.label == "seiz" and ev.channel == "TERM"


def test_stitcher_averages_two_overlapping_windows():
    st = Stitcher(n_samples=150)
    assert st.add(0, np.full(100, 0.2)).size == 0
    first = st.add(50, np.full(100, 0.6))
    np.testing.assert_allclose(first, np.full(50, 0.2), rtol=1e-6)
    rest = st.finish()
    np.testing.assert_allclose(rest[:50], 0.4, rtol=1e-6)
    np.testing.assert_allclose(rest[50:], 0.6, rtol=1e-6)
    assert first.dtype == np.float32 and st.emitted == 150


def test_stitcher_valid_mask_and_padding():
    probs = np.full(100, 0.6)
    valid = np.ones(100, dtype=bool)
    valid[80:] = False  # zero-padded tail of the last window
    out = stitch_windows([(0, np.full(100, 0.2)), (50, probs, valid)], n_samples=140)
    np.testing.assert_allclose(out[50:80], 0.4, rtol=1e-6)
    np.testing.assert_allclose(out[100:130], 0.6, rtol=1e-6)
    np.testing.assert_allclose(out[130:], 0.0)  # only invalid samples: fill value
    assert out.shape == (140,)


def test_stitch_matches_brute_force_and_covers_tail():
    rng = np.random.default_rng(0)
    win, stride, n = 60, 10, 175
    starts = list(range(0, n - win + 1, stride))
    if starts[-1] + win < n:
        starts.append(n - win)  # end-aligned last window covers the tail
    windows = [(s, rng.random(win)) for s in starts]
    total, count = np.zeros(n), np.zeros(n)
    for s, p in windows:
        total[s : s + win] += p
        count[s : s + win] += 1
    assert (count > 0).all()

    st = Stitcher(n)
    chunks = []
    for s, p in windows:
        chunks.append(st.add(s, p))
        assert st.buffered <= win + stride
    chunks.append(st.finish())
    out = np.concatenate(chunks)
    np.testing.assert_allclose(out, total / count, rtol=1e-6)
    np.testing.assert_allclose(stitch_windows(iter(windows), n), total / count, rtol=1e-6)


def test_stitcher_rejects_out_of_order_and_fills_uncovered():
    st = Stitcher()
    st.add(10, np.ones(5))
    with pytest.raises(ValueError):
        st.add(5, np.ones(5))
    out = stitch_windows([(10, np.ones(5))], n_samples=20, fill_value=0.0)
    assert out.tolist() == [0.0] * 10 + [1.0] * 5 + [0.0] * 5


def test_downsample_and_npz(tmp_path):
    fs = 4
    p = np.array([0.0, 0.2, 0.4, 0.6, 1.0, 1.0, 1.0, 1.0, 0.5, 0.1], dtype=np.float32)
    mean, peak = downsample_probabilities(p, fs=fs)
    assert mean.dtype == np.float16 and peak.dtype == np.float16
    np.testing.assert_allclose(mean, [0.3, 1.0, 0.3], atol=1e-3)
    np.testing.assert_allclose(peak, [0.6, 1.0, 0.5], atol=1e-3)

    path = tmp_path / "rec_probs.npz"
    save_probabilities_npz(path, p, fs=fs)
    z = load_probabilities_npz(path)
    np.testing.assert_array_equal(z["mean"], mean)
    np.testing.assert_array_equal(z["max"], peak)
    assert (z["fs"], z["resolution_s"], z["n_samples"]) == (4.0, 1.0, 10)
