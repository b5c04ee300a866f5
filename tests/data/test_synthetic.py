import dataclasses
import json

import numpy as np
import pyedflib
import pytest

from brr.cli.synth import main as synth_main
from brr.data import read_recording
from brr.data.annotations import SeizureEvent, read_csv_bi, read_csv_bi_with_duration
from brr.data.synthetic import (
    CHUNK_S,
    PHYSICAL_RANGE_UV,
    TUH_LABELS,
    Artefact,
    PlannedSeizure,
    plan_recording,
    synthesize,
    write_corpus,
)
from brr.montage import CHANNELS

FS = 256


def _files(directory):
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("corpus")
    write_corpus(out, recordings=2, minutes=2, seed=7)
    return out


def test_corpus_layout_and_index(corpus):
    index = json.loads((corpus / "corpus.json").read_text())
    assert index["seed"] == 7 and index["sampling_rate"] == 256 and index["labels"] == list(TUH_LABELS)
    assert [r["edf"] for r in index["recordings"]] == ["synth_s7_0000.edf", "synth_s7_0001.edf"]
    for entry in index["recordings"]:
        assert (corpus / entry["edf"]).is_file()
        assert (
            entry["csv_bi"] == entry["edf"].replace(".edf", ".csv_bi")
            and (corpus / entry["csv_bi"]).is_file()
        )
        assert entry["duration_s"] == 120 and len(entry["seizures"]) >= 1


def test_same_seed_gives_identical_bytes(corpus, tmp_path):
    write_corpus(tmp_path, recordings=2, minutes=2, seed=7)
    assert _files(tmp_path) == _files(corpus)


def test_other_seed_gives_other_signals(corpus, tmp_path):
    write_corpus(tmp_path, recordings=1, minutes=2, seed=8)
    assert (tmp_path / "synth_s8_0000.edf").read_bytes()[256:] != (corpus / "synth_s7_0000.edf").read_bytes()[
        256:
    ]


def test_recording_does_not_depend_on_corpus_size(corpus, tmp_path):
    write_corpus(tmp_path, recordings=1, minutes=2, seed=7)
    assert (tmp_path / "synth_s7_0000.edf").read_bytes() == (corpus / "synth_s7_0000.edf").read_bytes()


def test_edf_header_is_tuh_style(corpus):
    with pyedflib.EdfReader(str(corpus / "synth_s7_0000.edf")) as reader:
        assert reader.getSignalLabels() == list(TUH_LABELS)
        assert all(reader.getPhysicalDimension(i) == "uV" for i in range(19))
        assert (
            reader.getPhysicalMaximum(0) == PHYSICAL_RANGE_UV
            and reader.getPhysicalMinimum(0) == -PHYSICAL_RANGE_UV
        )
        assert reader.getFileDuration() == 120


def test_edfs_read_back_with_matching_annotations(corpus):
    index = json.loads((corpus / "corpus.json").read_text())
    for entry in index["recordings"]:
        rec = read_recording(corpus / entry["edf"])
        assert rec.duration_s == 120 and rec.source_labels == TUH_LABELS and np.isfinite(rec.signals).all()
        events, duration = read_csv_bi_with_duration(corpus / entry["csv_bi"])
        assert duration == 120
        assert events == [SeizureEvent(s["start_s"], s["stop_s"]) for s in entry["seizures"]]


def test_default_seizure_count_is_one_to_three_per_ten_minutes():
    counts = [len(plan_recording(seed, 0, 600).seizures) for seed in range(30)]
    assert min(counts) >= 1 and max(counts) <= 3 and len(set(counts)) > 1


def test_seizures_fit_do_not_overlap_and_last_20_to_120_s():
    for seed in range(10):
        plan = plan_recording(seed, 0, 1800, seizures=6)
        spans = [(s.start_s, s.stop_s) for s in plan.seizures]
        assert len(spans) == 6 and spans[0][0] >= 10 and spans[-1][1] <= 1790
        assert all(20 <= round(b - a, 6) <= 120 for a, b in spans)
        assert all(round(spans[i + 1][0] - spans[i][1], 6) >= 30 for i in range(5))


def test_seizure_count_is_configurable(tmp_path):
    write_corpus(tmp_path, recordings=1, minutes=2, seed=1, seizures=0)
    assert read_csv_bi(tmp_path / "synth_s1_0000.csv_bi") == []
    assert len(plan_recording(1, 0, 120, seizures=2).seizures) == 2
    with pytest.raises(ValueError, match="do not fit"):
        plan_recording(1, 0, 120, seizures=5)


def _quiet_plan(duration_s=180):
    plan = plan_recording(seed=1, index=0, duration_s=duration_s, seizures=0)
    return dataclasses.replace(plan, artefacts=(), flat_start_s=0.0, flat_stop_s=0.0)


def _signal(plan):
    return np.concatenate(list(synthesize(plan)), axis=-1)


def _peak_hz(x):
    freqs = np.fft.rfftfreq(x.size, 1 / FS)
    spectrum = np.abs(np.fft.rfft(x * np.hanning(x.size)))
    band = (freqs > 1.5) & (freqs < 20)
    return freqs[band][np.argmax(spectrum[band])]


def test_synthesis_is_chunked():
    chunks = list(synthesize(_quiet_plan(150)))
    assert [c.shape for c in chunks] == [(19, CHUNK_S * FS)] * 2 + [(19, 30 * FS)]


def test_background_has_posterior_alpha_and_falling_spectrum():
    x = _signal(_quiet_plan())
    freqs = np.fft.rfftfreq(x.shape[-1], 1 / FS)
    power = np.abs(np.fft.rfft(x, axis=-1)) ** 2
    band = lambda lo, hi: power[:, (freqs >= lo) & (freqs < hi)].mean(axis=-1)  # noqa: E731
    alpha, o1, fp1 = band(8, 12), CHANNELS.index("O1"), CHANNELS.index("Fp1")
    assert alpha[o1] > 5 * alpha[fp1]
    assert band(1, 4)[fp1] > band(13, 30)[fp1] > band(40, 55)[fp1]  # 1/f-like
    # Neighbours are correlated, distant electrodes much less.
    corr = np.corrcoef(x)
    assert corr[fp1, CHANNELS.index("F7")] > 0.3 > abs(corr[fp1, CHANNELS.index("O2")])


def test_seizure_is_focal_spreading_and_slowing():
    quiet = _quiet_plan()
    seizure = PlannedSeizure(60.0, 150.0, focus="C3", onset_hz=7.0, offset_hz=3.0, amplitude_uv=150.0)
    with_seizure = dataclasses.replace(quiet, seizures=(seizure,))
    base, x = _signal(quiet), _signal(with_seizure)
    discharge = x - base
    assert not discharge[:, : 60 * FS].any() and not discharge[:, 150 * FS :].any()
    c3, c4 = CHANNELS.index("C3"), CHANNELS.index("C4")
    early = discharge[:, 62 * FS : 64 * FS].std(axis=-1)
    assert early[c3] > 0 and early[c4] == 0  # focal at onset
    assert discharge[c4, 100 * FS : 110 * FS].std() > 0  # spread later
    assert _peak_hz(x[c3, 63 * FS : 71 * FS]) > 5.5 and _peak_hz(x[c3, 137 * FS : 147 * FS]) < 4.0
    assert discharge[c3, 130 * FS : 145 * FS].std() > 2 * discharge[c3, 62 * FS : 72 * FS].std()  # grows


def _artefact_delta(artefact):
    quiet = _quiet_plan(60)
    return _signal(dataclasses.replace(quiet, artefacts=(artefact,))) - _signal(quiet)


def test_blink_is_frontal():
    delta = np.abs(_artefact_delta(Artefact("blink", 10.0, 0.6, 150.0, 0, 1))).max(axis=-1)
    assert delta.argmax() in (CHANNELS.index("Fp1"), CHANNELS.index("Fp2"))
    assert delta[CHANNELS.index("O1")] < 0.1 * delta.max()


def test_muscle_burst_is_high_frequency_on_one_temporal_chain():
    delta = _artefact_delta(Artefact("muscle", 10.0, 3.0, 30.0, 1, 2))
    active = {CHANNELS[i] for i in np.flatnonzero(np.abs(delta).max(axis=-1) > 0)}
    assert active == {"F8", "T4", "T6"}
    row = delta[CHANNELS.index("T4"), 10 * FS : 13 * FS]
    freqs = np.fft.rfftfreq(row.size, 1 / FS)
    power = np.abs(np.fft.rfft(row)) ** 2
    assert (freqs * power).sum() / power.sum() > 30


def test_pop_hits_one_electrode_and_movement_can_rail():
    pop = _artefact_delta(Artefact("pop", 20.0, 1.5, 300.0, 5, 3))
    assert np.flatnonzero(np.abs(pop).max(axis=-1) > 0).tolist() == [5]
    movement = Artefact("movement", 20.0, 6.0, 2900.0, 0, 4)
    x = _signal(dataclasses.replace(_quiet_plan(60), artefacts=(movement,)))
    assert (np.abs(x) >= PHYSICAL_RANGE_UV).any() and np.abs(x).max() <= PHYSICAL_RANGE_UV


def test_flat_channel_is_flat():
    plan = dataclasses.replace(_quiet_plan(60), flat_channel="Cz", flat_start_s=10.0, flat_stop_s=40.0)
    x = _signal(plan)
    cz = CHANNELS.index("Cz")
    assert not x[cz, 10 * FS : 40 * FS].any() and x[cz, 41 * FS :].std() > 1


def test_other_sampling_rate_reads_back(tmp_path):
    write_corpus(tmp_path, recordings=1, minutes=1.5, seed=2, rate=500)
    rec = read_recording(tmp_path / "synth_s2_0000.edf")
    assert rec.source_rate == 500 and rec.duration_s == 90


def test_cli_writes_a_corpus(tmp_path, capsys):
    code = synth_main(
        [str(tmp_path), "--recordings", "1", "--minutes", "1", "--seed", "3", "--seizures", "1"]
    )
    assert code == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "corpus.json",
        "synth_s3_0000.csv_bi",
        "synth_s3_0000.edf",
    ]
    assert "corpus.json" in capsys.readouterr().out


def test_cli_reports_bad_arguments(tmp_path, capsys):
    assert synth_main([str(tmp_path), "--minutes", "1", "--seizures", "9"]) == 2
    assert "do not fit" in capsys.readouterr().err
    assert synth_main([str(tmp_path), "--rate", "50"]) == 2
