import pytest
from timescoring.annotations import Annotation
from timescoring.scoring import EventScoring, SampleScoring

from brr.data.annotations import SeizureEvent as E
from brr.events.scoring import aggregate_scores, score_events

REF = [E(100.0, 160.0), E(1000.0, 1100.0)]


def test_perfect_hypothesis():
    res = score_events(REF, REF, 3600.0)
    for view in ("event", "sample"):
        assert res[view]["sensitivity"] == 1.0
        assert res[view]["precision"] == 1.0
        assert res[view]["f1"] == 1.0
        assert res[view]["fp"] == 0 and res[view]["fp_per_24h"] == 0.0
    assert res["event"]["tp"] == 2 and res["event"]["fn"] == 0
    assert res["sample"]["tp"] == 160  # 60 s + 100 s at 1 Hz


def test_missed_event_and_false_alarm():
    hyp = [E(105.0, 150.0), E(2000.0, 2010.0)]
    res = score_events(REF, hyp, 3600.0)
    ev = res["event"]
    assert (ev["tp"], ev["fp"], ev["fn"], ev["ref_true"]) == (1, 1, 1, 2)
    assert ev["sensitivity"] == 0.5 and ev["precision"] == 0.5
    assert ev["fp_per_24h"] == pytest.approx(24.0)  # 1 FA in 1 h
    s = res["sample"]
    assert (s["tp"], s["fp"], s["fn"], s["ref_true"]) == (45, 10, 115, 160)


def test_matches_timescoring_directly():
    hyp = [E(90.0, 120.0), E(500.0, 530.5), E(1050.0, 1300.0)]
    res = score_events(REF, hyp, 7200.0)
    fs = 256
    ref_a = Annotation([(e.start_s, e.stop_s) for e in REF], fs, 7200 * fs)
    hyp_a = Annotation([(e.start_s, e.stop_s) for e in hyp], fs, 7200 * fs)
    ts_ev = EventScoring(ref_a, hyp_a)
    ts_s = SampleScoring(ref_a, hyp_a)
    for ours, theirs in ((res["event"], ts_ev), (res["sample"], ts_s)):
        assert ours["tp"] == theirs.tp and ours["fp"] == theirs.fp
        assert ours["sensitivity"] == pytest.approx(theirs.sensitivity)
        assert ours["precision"] == pytest.approx(theirs.precision)
        assert ours["f1"] == pytest.approx(theirs.f1)
        assert ours["fp_per_24h"] == pytest.approx(theirs.fpRate)


def test_no_reference_events_gives_undefined_sensitivity():
    res = score_events([], [E(10.0, 20.0)], 3600.0)
    assert res["event"]["sensitivity"] is None
    assert res["event"]["precision"] == 0.0
    assert res["event"]["fp"] == 1
    empty = score_events([], [], 3600.0)
    assert empty["event"]["f1"] is None and empty["event"]["fp_per_24h"] == 0.0


def test_hypothesis_beyond_recording_is_clipped():
    res = score_events(REF, [E(3590.0, 3700.0)], 3600.0)
    assert res["sample"]["fp"] == 10
    assert res["event"]["fp"] == 1


def test_aggregate_sums_counts_not_ratios():
    # File A: 1 of 1 detected, 1 h. File B: 1 of 3 detected, 1 FA, 23 h.
    a = score_events([E(100.0, 160.0)], [E(100.0, 160.0)], 3600.0)
    ref_b = [E(1000.0, 1060.0), E(10000.0, 10060.0), E(20000.0, 20060.0)]
    b = score_events(ref_b, [E(1000.0, 1060.0), E(50000.0, 50030.0)], 23 * 3600.0)
    agg = aggregate_scores([a, b])
    ev = agg["event"]
    assert agg["n_files"] == 2 and agg["duration_s"] == 24 * 3600.0
    assert (ev["tp"], ev["fp"], ev["fn"], ev["ref_true"]) == (2, 1, 2, 4)
    assert ev["sensitivity"] == 0.5  # mean of per-file ratios would be (1 + 1/3) / 2
    assert ev["precision"] == pytest.approx(2 / 3)
    assert ev["f1"] == pytest.approx(4 / 7)
    assert ev["fp_per_24h"] == pytest.approx(1.0)
    assert agg["sample"]["tp"] == 120 and agg["sample"]["fp"] == 30
    assert agg["sample"]["sensitivity"] == pytest.approx(120 / 240)


def test_aggregate_of_one_file_equals_the_file():
    res = score_events(REF, [E(105.0, 150.0), E(2000.0, 2010.0)], 3600.0)
    agg = aggregate_scores([res])
    assert agg["event"] == res["event"]
    assert agg["sample"] == res["sample"]


def test_aggregate_rejects_empty_and_mixed_rates():
    with pytest.raises(ValueError):
        aggregate_scores([])
    a = score_events(REF, REF, 3600.0)
    b = score_events(REF, REF, 3600.0, sample_fs=4)
    with pytest.raises(ValueError):
        aggregate_scores([a, b])
