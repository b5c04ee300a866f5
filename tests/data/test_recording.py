import datetime
import glob
import os
from pathlib import Path

import numpy as np
import pyedflib
import pytest
from pyedflib import highlevel

from brr.data import (
    MissingChannelsError,
    Recording,
    RecordingError,
    RecordingTooShortError,
    TruncatedRecordingError,
    UnreadableRecordingError,
    UnsupportedSamplingRateError,
    count_windows,
    iter_windows,
    open_recording,
    preprocess_signals,
    read_recording,
)
from brr.data.synthetic import TUH_LABELS, plan_recording, write_recording
from brr.montage import CHANNELS

WINDOW = 60 * 256


def write_edf(path, signals, rate, labels=TUH_LABELS, dimension="uV", physical=3000.0):
    headers = highlevel.make_signal_headers(
        list(labels),
        dimension=dimension,
        sample_frequency=rate,
        physical_min=-physical,
        physical_max=physical,
    )
    highlevel.write_edf(str(path), signals, headers, file_type=pyedflib.FILETYPE_EDF)
    return str(path)


def noise_edf(path, seconds=65, rate=256, seed=0, **kwargs):
    x = 20 * np.random.default_rng(seed).standard_normal((19, int(seconds * rate)))
    return write_edf(path, x, rate, **kwargs)


def read_raw_uv(path):
    with pyedflib.EdfReader(str(path)) as reader:
        return np.array([reader.readSignal(i) for i in range(reader.signals_in_file)])


@pytest.fixture(scope="module")
def ten_minute_edf(tmp_path_factory):
    plan = plan_recording(seed=11, index=0, duration_s=600, rate=250)
    return str(write_recording(plan, tmp_path_factory.mktemp("ten") / "rec.edf"))


def test_read_recording_contract(tmp_path):
    path = noise_edf(tmp_path / "a.edf", seconds=65, rate=500)
    rec = read_recording(path)
    assert isinstance(rec, Recording)
    assert rec.signals.shape == (19, 65 * 256) and rec.signals.dtype == np.float32
    assert rec.sampling_rate == 256 and rec.channels == CHANNELS
    assert rec.duration_s == pytest.approx(65.0)
    assert rec.source_rate == 500.0 and rec.source_labels == TUH_LABELS and rec.path == path
    assert np.isfinite(rec.signals).all()


def _with_header_start(path, date: bytes, time: bytes):
    """The EDF at ``path`` with its header's start date and time fields (dd.mm.yy, hh.mm.ss) rewritten."""
    data = bytearray(Path(path).read_bytes())
    data[168:184] = date + time
    Path(path).write_bytes(bytes(data))
    return path


def test_the_header_start_is_the_recording_start(tmp_path):
    path = _with_header_start(noise_edf(tmp_path / "a.edf"), b"17.06.21", b"08.30.15")
    with open_recording(path) as stream:
        assert stream.start_datetime == datetime.datetime(2021, 6, 17, 8, 30, 15)
    assert read_recording(path).start_datetime == datetime.datetime(2021, 6, 17, 8, 30, 15)
    # A date that is no day (pyedflib reads the fields but cannot make a datetime of them): no start,
    # and the recording still reads.
    path = _with_header_start(noise_edf(tmp_path / "b.edf"), b"31.02.21", b"08.30.15")
    with open_recording(path) as stream:
        assert stream.start_datetime is None and stream.duration_s == pytest.approx(65.0)


def test_channels_come_out_in_montage_order(tmp_path):
    # File order shuffled; each channel carries its own frequency so the output order can be checked.
    order = np.random.default_rng(3).permutation(19)
    t = np.arange(70 * 500) / 500
    freqs = 3.0 + np.arange(19)  # CHANNELS[i] carries 3 + i Hz
    x = np.stack([50 * np.sin(2 * np.pi * freqs[i] * t) for i in order])
    rec = read_recording(write_edf(tmp_path / "s.edf", x, 500, labels=[TUH_LABELS[i] for i in order]))
    spectrum_freqs = np.fft.rfftfreq(rec.n_samples, 1 / 256)
    peaks = [spectrum_freqs[np.argmax(np.abs(np.fft.rfft(row)))] for row in rec.signals]
    np.testing.assert_allclose(peaks, freqs, atol=0.05)


def test_physical_units_are_converted_to_microvolts(tmp_path):
    # 0.2 uV of noise is near the flat-channel floor, so treating millivolts as microvolts would show.
    x = 0.2 * np.random.default_rng(4).standard_normal((19, 65 * 256))
    in_uv = read_recording(write_edf(tmp_path / "uv.edf", x, 256, physical=3000.0))
    in_mv = read_recording(write_edf(tmp_path / "mv.edf", x / 1000, 256, dimension="mV", physical=3.0))
    np.testing.assert_allclose(in_mv.signals, in_uv.signals, atol=1e-3)


def test_streaming_matches_whole_array_reference(ten_minute_edf):
    raw = read_raw_uv(ten_minute_edf)
    reference = preprocess_signals(raw, 250)
    rec = read_recording(ten_minute_edf)
    np.testing.assert_allclose(rec.signals, reference, atol=1e-4)
    with open_recording(ten_minute_edf, block_s=37) as stream:
        blocks = list(stream.iter_blocks())
        assert max(b.shape[-1] for b in blocks) == 37 * 256
        np.testing.assert_allclose(np.concatenate(blocks, axis=-1), reference, atol=1e-4)


def test_streamed_windows_equal_in_memory_windows(ten_minute_edf):
    rec = read_recording(ten_minute_edf)
    in_memory = list(iter_windows(rec))
    with open_recording(ten_minute_edf, block_s=45) as stream:
        streamed = list(iter_windows(stream))
    assert len(streamed) == len(in_memory) == count_windows(rec.n_samples, WINDOW, 10 * 256) == 55
    for a, b in zip(in_memory, streamed, strict=True):
        assert a.start_s == b.start_s
        np.testing.assert_array_equal(a.valid, b.valid)
        np.testing.assert_allclose(a.signals, b.signals, atol=1e-4)


def _recording(n_samples):
    signals = np.arange(19 * n_samples, dtype=np.float32).reshape(19, n_samples) + 1.0  # no zeros
    return Recording(signals, None, 256.0, TUH_LABELS)


@pytest.mark.parametrize("n_samples", [3 * WINDOW, 3 * WINDOW + 1000, WINDOW - 1, 1])
def test_stride_equal_to_window_covers_every_sample_once(n_samples):
    rec = _recording(n_samples)
    windows = list(iter_windows(rec, window_s=60, stride_s=60))
    assert len(windows) == -(-n_samples // WINDOW)
    coverage = np.zeros(n_samples, dtype=int)
    for k, w in enumerate(windows):
        assert w.start_s == 60.0 * k
        assert (
            w.signals.shape == (19, WINDOW) and w.signals.dtype == np.float32 and w.valid.shape == (WINDOW,)
        )
        start = k * WINDOW
        n_valid = int(w.valid.sum())
        assert w.valid[:n_valid].all()  # valid samples first, then padding
        coverage[start : start + n_valid] += 1
        np.testing.assert_array_equal(w.signals[:, :n_valid], rec.signals[:, start : start + n_valid])
        assert not w.signals[:, n_valid:].any()
    np.testing.assert_array_equal(coverage, 1)


def test_overlapping_windows_reach_the_end_and_pad_the_tail():
    n_samples = 2 * WINDOW + 5 * 256
    rec = _recording(n_samples)
    windows = list(iter_windows(rec))  # 60 s every 10 s
    assert [w.start_s for w in windows] == [0.0, 10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0]
    last = windows[-1]
    assert last.valid.sum() == n_samples - 70 * 256
    assert not last.signals[:, ~last.valid].any()
    assert all(w.valid.all() for w in windows[:-1])
    np.testing.assert_array_equal(windows[3].signals, rec.signals[:, 30 * 256 : 30 * 256 + WINDOW])


def test_window_arguments_are_validated():
    rec = _recording(WINDOW)
    with pytest.raises(ValueError, match="exceeds"):
        list(iter_windows(rec, window_s=10, stride_s=20))
    with pytest.raises(ValueError, match="whole number of samples"):
        list(iter_windows(rec, window_s=60, stride_s=0.001))


def test_short_recording_allowed_gives_one_padded_window(tmp_path):
    path = noise_edf(tmp_path / "short.edf", seconds=30)
    with pytest.raises(RecordingTooShortError) as info:
        read_recording(path)
    assert path in str(info.value) and "30.000 s" in str(info.value)
    rec = read_recording(path, min_duration_s=0)
    (window,) = list(iter_windows(rec))
    assert window.valid.sum() == 30 * 256


def test_corrupt_bytes_are_unreadable(tmp_path):
    path = tmp_path / "junk.edf"
    path.write_bytes(np.random.default_rng(5).bytes(5000))
    with pytest.raises(UnreadableRecordingError) as info:
        read_recording(path)
    assert str(path) in str(info.value) and info.value.path == str(path)


@pytest.mark.parametrize("content", [b"", b"0       short header", b"not an edf at all\n" * 100])
def test_empty_and_text_files_are_unreadable(tmp_path, content):
    path = tmp_path / "bad.edf"
    path.write_bytes(content)
    with pytest.raises(UnreadableRecordingError):
        read_recording(path)


def test_missing_file_is_unreadable(tmp_path):
    with pytest.raises(UnreadableRecordingError, match="no such file"):
        read_recording(tmp_path / "nope.edf")


def test_truncated_file(tmp_path):
    path = noise_edf(tmp_path / "cut.edf", seconds=70)
    data = open(path, "rb").read()
    with open(path, "wb") as fh:
        fh.write(data[:-10_000])
    with pytest.raises(TruncatedRecordingError) as info:
        read_recording(path)
    assert info.value.actual_bytes == len(data) - 10_000 and info.value.expected_bytes == len(data)
    assert path in str(info.value) and "truncated" in str(info.value)


def test_missing_channel(tmp_path):
    x = np.zeros((18, 65 * 256))
    path = write_edf(tmp_path / "m.edf", x, 256, labels=TUH_LABELS[:-1])
    with pytest.raises(MissingChannelsError) as info:
        read_recording(path)
    assert info.value.missing == ("O2",)
    assert path in str(info.value) and "EEG FP1-REF" in str(info.value)


def test_rate_too_low(tmp_path):
    with pytest.raises(UnsupportedSamplingRateError, match="200 Hz"):
        read_recording(noise_edf(tmp_path / "r.edf", rate=200))


def test_mixed_rates_among_montage_channels(tmp_path):
    signals = [np.zeros(65 * 256) for _ in range(18)] + [np.zeros(65 * 512)]
    headers = highlevel.make_signal_headers(list(TUH_LABELS), physical_min=-3000, physical_max=3000)
    headers[-1]["sample_frequency"] = 512
    path = str(tmp_path / "mixed.edf")
    highlevel.write_edf(path, signals, headers, file_type=pyedflib.FILETYPE_EDF)
    with pytest.raises(UnsupportedSamplingRateError, match="different sampling rates"):
        read_recording(path)


def test_extra_non_eeg_channels_with_other_rates_are_ignored(tmp_path):
    rng = np.random.default_rng(0)  # noise: all-zero EEG channels would be refused as flat
    signals = [20 * rng.standard_normal(65 * 256) for _ in range(19)] + [np.zeros(65 * 100)]
    headers = highlevel.make_signal_headers(list(TUH_LABELS) + ["EKG"], physical_min=-3000, physical_max=3000)
    headers[-1]["sample_frequency"] = 100
    path = str(tmp_path / "ekg.edf")
    highlevel.write_edf(path, signals, headers, file_type=pyedflib.FILETYPE_EDF)
    assert read_recording(path).n_samples == 65 * 256


PYEDFLIB_FILES = sorted(
    glob.glob(os.path.join(os.path.dirname(pyedflib.__file__), "**", "*.[eb]df"), recursive=True)
)


def test_pyedflib_ships_example_files():
    assert len(PYEDFLIB_FILES) >= 5


@pytest.mark.parametrize("path", PYEDFLIB_FILES, ids=os.path.basename)
def test_pyedflib_example_files_are_rejected_clearly_or_mapped(path):
    try:
        rec = read_recording(path, min_duration_s=0)
    except MissingChannelsError as error:
        message = str(error)
        assert path in message and "missing" in message
        assert all(label in message for label in error.available)
    else:
        assert rec.signals.shape[0] == 19 and np.isfinite(rec.signals).all()


def test_every_ingestion_error_is_a_recording_error():
    for error in (
        MissingChannelsError,
        RecordingTooShortError,
        TruncatedRecordingError,
        UnreadableRecordingError,
        UnsupportedSamplingRateError,
    ):
        assert issubclass(error, RecordingError)


def test_closed_stream_refuses_to_read(tmp_path):
    stream = open_recording(noise_edf(tmp_path / "c.edf"))
    with stream:
        assert stream.n_samples == 65 * 256 and stream.duration_s == pytest.approx(65.0)
    with pytest.raises(ValueError, match="closed"):
        next(stream.iter_blocks())
