import datetime
import json
import os

import numpy as np
import pytest

import brr.atomic as atomic
from brr.atomic import atomic_write_bytes, atomic_write_text
from brr.data.annotations import (
    SeizureEvent,
    events_to_labels,
    labels_to_events,
    read_csv_bi,
    read_csv_bi_with_duration,
    read_events_json,
    read_events_tsv,
    read_events_tsv_with_duration,
    write_csv_bi,
    write_events_json,
    write_events_tsv,
)

EVENTS = [
    SeizureEvent(12.34, 56.78, confidence=0.9123),
    SeizureEvent(100.0, 200.5),
    SeizureEvent(3000.0001, 3599.9999, confidence=0.5),
]


def test_event_validation_and_duration():
    assert SeizureEvent(1.5, 4.0).duration_s == 2.5
    with pytest.raises(ValueError):
        SeizureEvent(5.0, 5.0)
    with pytest.raises(ValueError):
        SeizureEvent(-1.0, 5.0)
    with pytest.raises(ValueError):
        SeizureEvent(1.0, 2.0, confidence=1.5)
    with pytest.raises(ValueError):
        SeizureEvent(float("nan"), 2.0)


def test_csv_bi_header_exact(tmp_path):
    path = tmp_path / "aaaaaaac_s001_t000.csv_bi"
    write_csv_bi(path, [SeizureEvent(100.0, 200.5), SeizureEvent(12.34, 56.78, confidence=0.9123)], 1750.0)
    expected = (
        "# version = csv_v1.0.0\n"
        "# bname = aaaaaaac_s001_t000\n"
        "# duration = 1750.0000 secs\n"
        "# montage_file = nedc_eas_default_montage.txt\n"
        "#\n"
        "channel,start_time,stop_time,label,confidence\n"
        "TERM,12.3400,56.7800,seiz,0.9123\n"
        "TERM,100.0000,200.5000,seiz,1.0000\n"
    )
    assert path.read_text() == expected


def test_csv_bi_round_trip(tmp_path):
    path = tmp_path / "rec.csv_bi"
    write_csv_bi(path, reversed(EVENTS), 3600.0, bname="custom", montage_file="m.txt")
    events, duration = read_csv_bi_with_duration(path)
    assert events == EVENTS
    assert duration == 3600.0
    assert "# bname = custom\n" in path.read_text()
    assert "# montage_file = m.txt\n" in path.read_text()


def test_csv_bi_rounds_to_four_decimals(tmp_path):
    path = tmp_path / "r.csv_bi"
    write_csv_bi(path, [SeizureEvent(1.23456, 7.00004, confidence=0.33333)], 10.0)
    assert read_csv_bi(path) == [SeizureEvent(1.2346, 7.0, confidence=0.3333)]


def test_csv_bi_empty(tmp_path):
    path = tmp_path / "e.csv_bi"
    write_csv_bi(path, [], 60.0)
    assert path.read_text().endswith("channel,start_time,stop_time,label,confidence\n")
    assert read_csv_bi_with_duration(path) == ([], 60.0)


def test_read_tuh_per_channel_csv_bi(tmp_path):
    path = tmp_path / "tuh.csv"
    path.write_text(
        "# version = csv_v1.0.0\n"
        "# bname = aaaaaaac_s001_t000\n"
        "# duration = 301.0000 secs\n"
        "# montage_file = $NEDC_NFC/lib/nedc_eas_default_montage.txt\n"
        "#\n"
        "channel,start_time,stop_time,label,confidence\n"
        "FP1-F7,0.0000,36.8868,bckg,1.0000\n"
        "FP1-F7,36.8868,183.3055,fnsz,1.0000\n"
        "FP1-F7,183.3055,301.0000,bckg,1.0000\n"
        "F7-T3,40.0000,190.0000,fnsz,0.8000\n"
        "T3-T5,250.0000,260.0000,gnsz,0.7000\n"
        "T5-O1,255.0000,270.0000,cpsz,0.6000\n"
        "C3-CZ,0.0000,301.0000,bckg,1.0000\n"
    )
    events, duration = read_csv_bi_with_duration(path)
    assert duration == 301.0
    assert events == [
        SeizureEvent(36.8868, 190.0, label="fnsz", confidence=1.0),
        SeizureEvent(250.0, 270.0, label="seiz", confidence=0.7),
    ]


def test_read_csv_bi_prefers_term_rows(tmp_path):
    path = tmp_path / "mixed.csv_bi"
    path.write_text(
        "channel,start_time,stop_time,label,confidence\n"
        "FP1-F7,10.0000,30.0000,seiz,1.0000\n"
        "TERM,12.0000,28.0000,seiz,1.0000\n"
    )
    assert read_csv_bi(path) == [SeizureEvent(12.0, 28.0)]


def test_read_csv_bi_rejects_unknown_label(tmp_path):
    path = tmp_path / "bad.csv_bi"
    path.write_text("channel,start_time,stop_time,label,confidence\nTERM,1.0,2.0,artf,1.0\n")
    with pytest.raises(ValueError, match="artf"):
        read_csv_bi(path)


def test_tsv_round_trip_and_format(tmp_path):
    path = tmp_path / "sub-01_ses-01_task-szMonitoring_run-00_events.tsv"
    write_events_tsv(path, EVENTS, 3600.0, "sub-01_run-00")
    lines = path.read_text().splitlines()
    assert lines[0] == "onset\tduration\teventType\tconfidence\tchannels\tdateTime\trecordingDuration"
    assert lines[1] == "12.3400\t44.4400\tsz\t0.9123\tn/a\tn/a\t3600.0000"
    events, duration = read_events_tsv_with_duration(path)
    assert events == EVENTS
    assert duration == 3600.0


def test_tsv_no_events_writes_background(tmp_path):
    path = tmp_path / "events.tsv"
    write_events_tsv(path, [], 1234.5, "rec", date_time="2020-01-01 10:00:00")
    row = "0.0000\t1234.5000\tbckg\tn/a\tn/a\t2020-01-01 10:00:00\t1234.5000"
    assert path.read_text().splitlines()[1] == row
    assert read_events_tsv_with_duration(path) == ([], 1234.5)


def test_tsv_date_time_from_a_datetime_or_none(tmp_path):
    path = tmp_path / "events.tsv"
    write_events_tsv(path, EVENTS[:1], 3600.0, "rec", date_time=datetime.datetime(2021, 6, 17, 8, 30, 15, 250000))
    assert path.read_text().splitlines()[1].split("\t")[5] == "2021-06-17 08:30:15"  # whole seconds
    write_events_tsv(path, [], 3600.0, "rec", date_time=None)
    assert path.read_text().splitlines()[1].split("\t")[5] == "n/a"


def test_read_szcore_tsv_with_subtypes(tmp_path):
    path = tmp_path / "events.tsv"
    path.write_text(
        "onset\tduration\teventType\tconfidence\tchannels\tdateTime\trecordingDuration\n"
        "296.0\t40.0\tsz_foc_ia\tn/a\tn/a\t2016-10-01 10:04:56\t3600.0\n"
        "10.5\t20.25\tsz\t0.75\tn/a\t2016-10-01 10:04:56\t3600.0\n"
    )
    assert read_events_tsv(path) == [
        SeizureEvent(10.5, 30.75, confidence=0.75),
        SeizureEvent(296.0, 336.0, label="sz_foc_ia"),
    ]


def test_json_round_trip(tmp_path):
    path = tmp_path / "rec.json"
    write_events_json(path, EVENTS, 3600.0, "rec", extra={"model": "v3"})
    doc = json.loads(path.read_text())
    assert doc["recording"] == "rec" and doc["model"] == "v3" and doc["n_events"] == 3
    assert doc["events"][0]["duration_s"] == pytest.approx(44.44)
    assert read_events_json(path) == EVENTS
    with pytest.raises(ValueError):
        write_events_json(path, EVENTS, 3600.0, "rec", extra={"events": []})


def test_labels_round_trip():
    fs = 256
    events = [SeizureEvent(1.0, 2.5), SeizureEvent(4.0, 10.0)]
    labels = events_to_labels(events, 10 * fs, fs)
    assert labels.dtype == np.uint8 and labels.shape == (2560,)
    assert labels.sum() == int(1.5 * fs + 6 * fs)
    assert labels[fs - 1] == 0 and labels[fs] == 1 and labels[int(2.5 * fs)] == 0
    assert labels_to_events(labels, fs) == events
    # Events beyond the recording are clipped.
    assert events_to_labels([SeizureEvent(9.0, 20.0)], 2560, fs).sum() == fs


def test_labels_to_events_confidence():
    labels = np.array([0, 1, 1, 0, 1], dtype=np.uint8)
    probs = np.array([0.1, 0.8, 0.6, 0.2, 0.9], dtype=np.float32)
    events = labels_to_events(labels, fs=1, probabilities=probs)
    assert [(e.start_s, e.stop_s) for e in events] == [(1.0, 3.0), (4.0, 5.0)]
    assert [e.confidence for e in events] == pytest.approx([0.7, 0.9])


def test_atomic_write_replaces(tmp_path):
    path = tmp_path / "sub" / "out.txt"
    atomic_write_text(path, "one\n")
    atomic_write_bytes(path, b"two\n")
    assert path.read_bytes() == b"two\n"
    assert os.listdir(path.parent) == ["out.txt"]


def test_atomic_write_failure_leaves_old_file_and_no_temp(tmp_path, monkeypatch):
    path = tmp_path / "rec.csv_bi"
    write_csv_bi(path, EVENTS, 3600.0)
    before = path.read_text()

    def boom(fd):
        raise OSError("disk full")

    # fsync runs after the bytes are written: the temp file holds a complete copy
    # that must never replace the target, and must be removed.
    monkeypatch.setattr(atomic.os, "fsync", boom)
    with pytest.raises(OSError, match="disk full"):
        write_csv_bi(path, [], 10.0)
    assert path.read_text() == before
    assert os.listdir(tmp_path) == ["rec.csv_bi"]


def test_atomic_write_failure_midway_creates_nothing(tmp_path, monkeypatch):
    path = tmp_path / "new.tsv"
    real_fdopen = os.fdopen

    class HalfWriter:
        def __init__(self, fh):
            self.fh = fh

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.fh.close()

        def write(self, data):
            self.fh.write(data[: len(data) // 2])
            raise RuntimeError("killed midway")

    monkeypatch.setattr(atomic.os, "fdopen", lambda fd, mode: HalfWriter(real_fdopen(fd, mode)))
    with pytest.raises(RuntimeError, match="midway"):
        write_events_tsv(path, EVENTS, 3600.0, "rec")
    assert os.listdir(tmp_path) == []
