"""Data quality: what counts as non-finite, flat and saturated, per epoch and per recording."""

from __future__ import annotations

import numpy as np
import pytest

from brr.data.quality import ChannelRails, QualityPolicy, assess_quality, bad_channels_line, classify_epoch
from brr.errors import UsageError

RATE = 256
RAILS = ChannelRails(physical_min=-3000.0, physical_max=3000.0, digital_step=6000.0 / 65534,
                     microvolts_per_unit=1.0)


def epoch(channels: int = 3, seconds: int = 60, seed: int = 0) -> np.ndarray:
    return 20.0 * np.random.default_rng(seed).standard_normal((channels, seconds * RATE))


def codes(x: np.ndarray) -> list[str]:
    names = ("ok", "nonfinite", "saturated", "flat")
    return [names[c] for c in classify_epoch(x, [RAILS] * len(x), RATE)]


def test_eeg_is_ok_and_each_problem_is_named():
    x = epoch(4)
    x[1] = np.inf
    x[2] = 3000.0  # on the rail
    x[3] = 7.0 + np.random.default_rng(1).integers(-1, 2, x.shape[1]) * RAILS.digital_step  # +-1 LSB of noise
    assert codes(x) == ["ok", "nonfinite", "saturated", "flat"]


def test_a_channel_is_bad_only_for_more_than_half_the_epoch():
    x = epoch(2)
    half = x.shape[1] // 2
    x[0, :half] = np.nan  # exactly half: not "most of" the epoch
    x[1, : half + RATE] = np.nan
    assert codes(x) == ["ok", "nonfinite"]


def test_mixed_problems_take_the_most_frequent():
    x = epoch(1)
    n = x.shape[1]
    x[0, : n // 3] = np.nan
    x[0, n // 3 : n - RATE] = -3000.0  # more railed than non-finite, together most of the epoch
    assert codes(x) == ["saturated"]


def test_flat_is_measured_in_microvolts():
    x = np.full((1, 60 * RATE), 0.0) + np.tile([0.0, 0.3], 30 * RATE)  # 0.3 uV peak-to-peak
    assert codes(x) == ["flat"]
    millivolts = ChannelRails(-3.0, 3.0, 6.0 / 65534, microvolts_per_unit=1e3)  # the same 0.3 in mV: 300 uV
    assert classify_epoch(x, [millivolts], RATE).tolist() == [0]


def test_recording_assessment_spans_and_refusal():
    n = 5 * 60 * RATE
    data = 20.0 * np.random.default_rng(2).standard_normal((19, n))
    data[:6, 60 * RATE : 3 * 60 * RATE] = 0.0  # six channels dead in epochs 1 and 2
    data[18] = np.inf  # one channel gone for the whole recording
    channels = [f"c{i}" for i in range(19)]
    quality = assess_quality(lambda a, b: data[:, a:b], n, RATE, [RAILS] * 19, channels, QualityPolicy(4))
    assert quality.n_epochs == 5 and quality.usable
    assert quality.unusable_channels() == {"c18": "nonfinite"}
    assert quality.unusable_spans_s() == [[60.0, 180.0]]  # 7 bad channels at once there
    doc = quality.to_dict()
    assert doc["bad_channel_epochs"] == {"nonfinite": 5, "saturated": 0, "flat": 12}
    assert doc["channels"]["c0"] == {"flat": 2} and doc["channels"]["c18"] == {"nonfinite": 5}
    assert bad_channels_line(doc).startswith("data quality: c0 flat in 2/5 epochs")
    strict = assess_quality(lambda a, b: data[:, a:b], n, RATE, [RAILS] * 19, channels, QualityPolicy(0))
    assert not strict.usable and "1 of 19 montage channels unusable" in strict.reason()
    assert "nonfinite: c18" in strict.reason()


def test_policy_rejects_a_negative_threshold():
    with pytest.raises(UsageError):
        QualityPolicy(-1)
