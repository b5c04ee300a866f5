import math

import numpy as np
import pytest
from scipy import signal

from brr.data import UnsupportedSamplingRateError, preprocess_signals
from brr.data.preprocess import (
    CLIP_LIMIT,
    FILTER_PADDING_S,
    NORM_SEGMENT_S,
    NORM_SEGMENTS,
    TARGET_RATE,
    design_filters,
    filter_signals,
    filtered_span,
    normalisation_spans,
    replace_nonfinite,
    resample_to_target,
    resampling_ratio,
)

RATES = [250, 400, 500, 512, 1000]


@pytest.mark.parametrize(
    "rate, ratio",
    [
        (250, (128, 125)),
        (400, (16, 25)),
        (500, (64, 125)),
        (512, (1, 2)),
        (1000, (32, 125)),
        (256, (1, 1)),
        (487.5, (512, 975)),
        (np.float64(240.0), (16, 15)),
    ],
)
def test_resampling_ratio_is_exact(rate, ratio):
    assert resampling_ratio(rate) == ratio


@pytest.mark.parametrize("rate", [200, 239.9, 0, -256, math.nan, math.inf, 257.123456789])
def test_unsupported_rates_raise(rate):
    with pytest.raises(UnsupportedSamplingRateError, match="Hz"):
        resampling_ratio(rate, "f.edf")


def _sine(rate, seconds, freq, amplitude=100.0):
    t = np.arange(int(round(seconds * rate))) / rate
    return amplitude * np.sin(2 * np.pi * freq * t)


@pytest.mark.parametrize("rate", RATES)
def test_resampling_keeps_frequency_and_amplitude(rate):
    x = np.stack([_sine(rate, 20, 10.0), _sine(rate, 20, 47.0, 30.0)])
    y = resample_to_target(x, rate)
    assert y.shape == (2, 20 * TARGET_RATE)
    t = np.arange(y.shape[-1]) / TARGET_RATE
    inner = slice(TARGET_RATE, -TARGET_RATE)
    assert np.abs(y[0, inner] - 100 * np.sin(2 * np.pi * 10 * t[inner])).max() < 0.5
    assert np.abs(y[1, inner] - 30 * np.sin(2 * np.pi * 47 * t[inner])).max() < 0.2


@pytest.mark.parametrize("rate", RATES)
def test_resampling_keeps_a_dc_offset_exactly(rate):
    y = resample_to_target(np.full((1, rate * 3), 700.0), rate)
    assert np.abs(y - 700.0).max() < 1e-9


@pytest.mark.parametrize("rate", RATES + [256])
def test_full_preprocessing_keeps_a_sine_at_its_frequency(rate):
    x = np.tile(_sine(rate, 60, 10.0), (19, 1))
    out = preprocess_signals(x, rate)
    assert out.dtype == np.float32 and out.shape == (19, 60 * TARGET_RATE)
    spectrum = np.abs(np.fft.rfft(out[0]))
    freqs = np.fft.rfftfreq(out.shape[-1], 1 / TARGET_RATE)
    assert freqs[np.argmax(spectrum)] == pytest.approx(10.0, abs=1 / 60)
    # A sine's IQR is 2 * sin(pi / 4) * A, so the robust scale is 1.048 A: peak ~0.954 after normalising.
    inner = out[0, 5 * TARGET_RATE : -5 * TARGET_RATE]
    assert np.abs(inner).max() == pytest.approx(1.349 / (2 * math.sin(math.pi / 4)), rel=0.02)


def test_design_filters_band_and_notch():
    filters = design_filters(mains_hz=60)
    assert filters.band_hz == (0.5, 120.0) and filters.notch_hz == 60.0
    freqs, response = signal.sosfreqz(filters.sos, worN=[0.05, 10.0, 60.0, 100.0, 127.0], fs=TARGET_RATE)
    gain = np.abs(response) ** 2  # filtfilt squares the magnitude
    assert gain[1] == pytest.approx(1.0, abs=0.01) and gain[3] == pytest.approx(1.0, abs=0.05)
    assert gain[0] < 1e-4 and gain[2] < 1e-6 and gain[4] < 0.1
    assert design_filters(mains_hz=50).notch_hz == 50.0
    assert design_filters(mains_hz=None).notch_hz is None


def test_band_edge_and_notch_above_nyquist_are_dropped_cleanly():
    at_200 = design_filters(fs=200, mains_hz=60)
    assert at_200.band_hz == (0.5, None) and at_200.notch_hz == 60.0
    at_100 = design_filters(fs=100, mains_hz=60)
    assert at_100.notch_hz is None
    x = np.random.default_rng(0).standard_normal((2, 2000))
    assert np.isfinite(filter_signals(x, at_100)).all()


@pytest.mark.parametrize("mains", [50.0, 60.0])
def test_notch_removes_mains(mains):
    rate = 500
    x = np.tile(_sine(rate, 60, 10.0, 50.0) + _sine(rate, 60, mains, 50.0), (19, 1))
    out = preprocess_signals(x, rate, mains_hz=mains)
    spectrum = np.abs(np.fft.rfft(out[0, 5 * TARGET_RATE : -5 * TARGET_RATE]))
    freqs = np.fft.rfftfreq(50 * TARGET_RATE, 1 / TARGET_RATE)
    at = lambda f: spectrum[np.argmin(np.abs(freqs - f))]  # noqa: E731
    assert at(mains) < 0.01 * at(10.0)


def test_replace_nonfinite_interpolates_and_zeroes_dead_channels():
    x = np.array([[1.0, np.nan, 3.0, np.inf, 7.0], [np.nan] * 5, [np.nan, 2.0, 2.0, 4.0, -np.inf]])
    y = replace_nonfinite(x)
    np.testing.assert_array_equal(y, [[1, 2, 3, 5, 7], [0, 0, 0, 0, 0], [2, 2, 2, 4, 4]])
    assert np.isnan(x[0, 1])  # the input is not modified


@pytest.mark.parametrize("rate", RATES + [256])
def test_flat_nan_and_saturated_channels_give_finite_bounded_output(rate):
    rng = np.random.default_rng(1)
    n = rate * 90
    x = 20 * rng.standard_normal((19, n))
    x[0] = 0.0  # flat at zero
    x[1] = 700.0  # flat at a DC offset
    x[2, n // 3 : n // 2] = np.nan  # a gap
    x[3] = np.nan  # dead channel
    x[4] = np.clip(5000 * np.sin(np.arange(n) / rate * 2 * np.pi * 3), -3000, 3000)  # railed all along
    x[5, n // 2 : n // 2 + rate * 4] = 3000.0  # brief saturation
    x[6, ::1000] = 1e9  # absurd spikes
    out = preprocess_signals(x, rate)
    assert out.dtype == np.float32 and np.isfinite(out).all()
    assert np.abs(out).max() <= CLIP_LIMIT
    assert np.abs(out[0]).max() < 1e-6 and np.abs(out[1]).max() < 1e-6 and np.abs(out[3]).max() < 1e-6
    for channel in (2, 5, 6):
        # Robustly normalised: the bulk of the samples keeps unit scale despite the bad ones.
        q25, q75 = np.percentile(out[channel], [25, 75])
        assert 1.0 < (q75 - q25) < 1.8


def test_normalisation_spans_are_bounded_and_spread_out():
    short = NORM_SEGMENTS * NORM_SEGMENT_S * TARGET_RATE
    assert normalisation_spans(1000) == [(0, 1000)]
    assert normalisation_spans(short) == [(0, short)]
    n = 24 * 3600 * TARGET_RATE
    spans = normalisation_spans(n)
    assert len(spans) == NORM_SEGMENTS
    assert spans[0][0] == 0 and spans[-1][1] == n
    assert all(b - a == NORM_SEGMENT_S * TARGET_RATE for a, b in spans)
    assert all(spans[i][1] <= spans[i + 1][0] for i in range(len(spans) - 1))


@pytest.mark.parametrize("rate", [250, 256, 1000])
def test_filtered_span_matches_whole_signal_filtering(rate):
    rng = np.random.default_rng(2)
    raw = np.cumsum(rng.standard_normal((3, rate * 150)), axis=-1) + 30 * rng.standard_normal((3, rate * 150))
    filters = design_filters()
    whole = filter_signals(resample_to_target(raw, rate), filters)
    reads = []

    def read_raw(a, b):
        reads.append((a, b))
        return raw[:, a:b]

    for start, stop in [(0, 1000), (5000, 25000), (100 * 256, 150 * 256), (77 * 256 + 3, 77 * 256 + 4)]:
        part = filtered_span(read_raw, raw.shape[-1], rate, start, stop, filters)
        np.testing.assert_allclose(part, whole[:, start:stop], atol=1e-6 * np.abs(whole).max())
        # Only the span plus the filter padding on each side is read, never the whole recording.
        a, b = reads[-1]
        assert b - a <= ((stop - start) / TARGET_RATE + 2 * FILTER_PADDING_S + 1) * rate


def test_empty_signal_is_refused():
    with pytest.raises(ValueError):
        preprocess_signals(np.zeros((19, 0)), 256)
