"""brr.train.store and the training windows over it: windows equal direct preprocessing, resume reuses
and rebuilds exactly what changed, bad recordings are named and left out, a damaged store is refused
naming the file, the epoch stream is one stream whatever the number of processes and loader workers,
brr-prepare end to end. Corpora of 2-minute synthetic recordings keep each test to seconds."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from brr.cli.prepare import main as prepare_main
from brr.data import count_windows, iter_windows, read_recording
from brr.data.annotations import SeizureEvent, events_to_labels, read_csv_bi, write_csv_bi
from brr.data.synthetic import plan_recording, write_corpus, write_recording
from brr.events.postprocess import PostprocessConfig
from brr.model import build_detector, resolve_config
from brr.train.dataset import TrainingWindows, epoch_loader, find_corpus, load_training_data, split_corpus
from brr.train.evaluate import evaluate_corpus
from brr.train.settings import SettingsError, make_settings
from brr.train.store import CorpusError, open_store, prepare_store

RATE = 256
TINY_MODEL = {
    "base": "v3-small", "name": "tiny-store-test", "window_samples": 1280, "tcn_channels": [8], "tcn_out": 8,
    "electrode_dim": 8, "node_mamba": {"d_model": 8, "d_state": 4, "headdim": 4, "layers": 1},
    "edge_mamba": {"d_model": 16, "d_state": 4, "headdim": 4, "layers": 0}, "gnn_layers": 1,
    "k_eigenvectors": 4,
}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("corpus")
    write_corpus(directory, recordings=4, minutes=2, seed=5)
    return directory


@pytest.fixture(scope="module")
def store(corpus, tmp_path_factory):
    path = tmp_path_factory.mktemp("store")
    result = prepare_store(corpus, path, 60.0, workers=1)
    assert (result.prepared, result.reused, result.failed) == (4, 0, [])
    return open_store(path)


def copy_corpus(corpus: Path, where: Path) -> Path:
    return Path(shutil.copytree(corpus, where))


def shard_times(store_dir: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in (store_dir / "shards").iterdir()}


def test_windows_from_the_store_equal_direct_preprocessing(store, corpus):
    assert [r.source.name for r in store.recordings] == [e.recording_path.name for e in find_corpus(corpus)]
    for recording in store.recordings[:2]:
        direct = read_recording(recording.source, mains_hz=60.0)
        events = read_csv_bi(recording.source.with_suffix(".csv_bi"))
        labels = events_to_labels(events, direct.n_samples, RATE)
        assert recording.n_samples == direct.n_samples
        assert np.array_equal(np.load(recording.labels_path), labels)
        # 30 s windows every 25 s over 120 s: the last one is 10 s of signal and 20 s of padding.
        windows = TrainingWindows([recording], 30.0, 25.0)
        assert len(windows) == count_windows(direct.n_samples, 30 * RATE, 25 * RATE) == 5
        cumulative = np.concatenate([[0], np.cumsum(labels, dtype=np.int64)])
        for index in range(len(windows)):
            signals, window_labels, valid = windows[index]
            start, n = int(windows.starts[index]), int(valid.sum())
            assert signals.shape == (19, 30 * RATE) and signals.dtype == np.float32
            assert n == min(30 * RATE, direct.n_samples - start) and valid[:n].all()
            assert np.array_equal(signals[:, :n], direct.signals[:, start : start + n])
            assert not signals[:, n:].any() and not window_labels[n:].any()
            assert np.array_equal(window_labels[:n], labels[start : start + n])
            has_seizure = cumulative[start + n] - cumulative[start] > 0
            assert (index in windows.positives) == has_seizure and (index in windows.negatives) != has_seizure
        assert len(windows.positives) and len(windows.negatives)
        # Validation reads whole recordings block by block: seams must not show.
        blocks = list(recording.iter_blocks(block_s=7.0))
        assert len(blocks) == 18 and np.array_equal(np.concatenate(blocks, axis=-1), direct.signals)
        for stored, read in zip(iter_windows(recording, 60, 30), iter_windows(direct, 60, 30), strict=True):
            assert stored.start_s == read.start_s and np.array_equal(stored.signals, read.signals)


def test_prepare_resumes_and_rebuilds_only_what_changed(corpus, tmp_path):
    data, out = copy_corpus(corpus, tmp_path / "corpus"), tmp_path / "store"
    assert prepare_store(data, out, 60.0).prepared == 4
    before = shard_times(out)
    again = prepare_store(data, out, 60.0)
    assert (again.prepared, again.reused) == (0, 4) and shard_times(out) == before

    keys = [r.key for r in open_store(out).recordings]
    edf_1, edf_2 = sorted(data.glob("*.edf"))[1:3]
    write_csv_bi(edf_1.with_suffix(".csv_bi"), [SeizureEvent(30.0, 60.0)], 120.0)
    write_recording(plan_recording(seed=77, index=0, duration_s=120), edf_2)
    changed = prepare_store(data, out, 60.0)
    assert (changed.prepared, changed.reused) == (2, 2)
    recordings = open_store(out).recordings
    assert [r.key == k for r, k in zip(recordings, keys)] == [True, False, False, True]
    assert recordings[1].events == (SeizureEvent(30.0, 60.0),)
    assert recordings[1].seizure_runs.tolist() == [[30 * RATE, 60 * RATE]]
    after = shard_times(out)
    kept = {name: t for name, t in before.items() if name.startswith((keys[0], keys[3]))}
    assert len(kept) == 6 and all(after[name] == t for name, t in kept.items())
    assert not any(name.startswith((keys[1], keys[2])) for name in after)  # the replaced shards are gone

    # A run killed between a shard's arrays and its metadata, and its leftover temporary.
    (out / "shards" / f"{keys[3]}.json").unlink()
    (out / "shards" / f".{keys[3]}.signals.npy.0123abcd.tmp").write_bytes(b"partial")
    resumed = prepare_store(data, out, 60.0)
    assert (resumed.prepared, resumed.reused) == (1, 3)
    assert not list((out / "shards").glob(".*.tmp"))
    assert prepare_store(data, out, 50.0).prepared == 4  # the notch is part of every key


def test_bad_recordings_are_named_and_left_out(corpus, tmp_path, caplog):
    data, out = copy_corpus(corpus, tmp_path / "corpus"), tmp_path / "store"
    corrupt, unannotated, misannotated, good = sorted(data.glob("*.edf"))
    corrupt.write_bytes(b"not an EDF file " * 64)
    unannotated.with_suffix(".csv_bi").unlink()
    misannotated.with_suffix(".csv_bi").write_text("channel,start_time,stop_time,label,confidence\n"
                                                   "TERM,50.0,20.0,seiz,1.0\n")
    with caplog.at_level(logging.WARNING, logger="brr.train.store"):
        result = prepare_store(data, out, 60.0)
    assert (result.prepared, result.reused) == (1, 0)
    problems = {f.source: f.problem for f in result.failed}
    assert list(problems) == [corrupt.name, unannotated.name, misannotated.name]
    assert f"{corrupt.name}: not a readable EDF/BDF file" in problems[corrupt.name]
    assert f"{unannotated.name}: no annotation file {unannotated.stem}.csv_bi" in problems[unannotated.name]
    assert problems[misannotated.name].endswith(
        f"{misannotated.stem}.csv_bi: event stop must be > start, got start=50.0 stop=20.0")
    assert all(any(Path(name).stem in message for message in caplog.messages) for name in problems)
    stored = open_store(out)
    assert [r.source.name for r in stored.recordings] == [good.name]
    assert [f.source for f in stored.failed] == list(problems)


def test_damaged_store_is_refused_naming_the_file(store, tmp_path):
    with pytest.raises(CorpusError, match="not a prepared store"):
        open_store(tmp_path)
    copy = Path(shutil.copytree(store.path, tmp_path / "store"))
    recording = open_store(copy).recordings[2]
    signals = recording.signals_path
    with open(signals, "r+b") as fh:
        fh.truncate(signals.stat().st_size - 4 * 19)
    with pytest.raises(CorpusError, match=f"{signals.name}: truncated"):  # shrunk after it was opened
        recording.read_window(recording.n_samples - 10, 20)
    with pytest.raises(CorpusError, match=f"{signals.name}: truncated"):
        open_store(copy)
    signals.unlink()
    with pytest.raises(CorpusError, match=f"{signals.name}: shard missing"):
        open_store(copy)
    (copy / "index.json").write_text('{"format": "brr-window-store", ')
    with pytest.raises(CorpusError, match="index.json: corrupt store index"):
        open_store(copy)


def batches(loader) -> list[tuple[torch.Tensor, ...]]:
    return [tuple(t.clone() for t in batch) for batch in loader]


def assert_same_batches(left, right) -> None:
    assert len(left) == len(right)
    for a, b in zip(left, right):
        assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def test_epoch_stream_is_the_same_for_any_number_of_processes(store):
    windows = TrainingWindows(store.recordings, 10.0, 5.0)
    drawn = windows.draw_epoch(48, 0.5, seed=1, epoch=0)
    assert np.array_equal(drawn, windows.draw_epoch(48, 0.5, seed=1, epoch=0))
    assert not np.array_equal(drawn, windows.draw_epoch(48, 0.5, seed=1, epoch=1))
    assert len(np.unique(windows.recording_of[drawn[:8]])) > 1  # a batch mixes recordings
    whole = batches(epoch_loader(windows, drawn, 8, workers=0))
    assert len(whole) == 6 and whole[0][0].shape == (8, 19, 10 * RATE) and whole[0][2].dtype == torch.bool
    expected = [windows[i] for i in drawn[:8]]
    assert all(np.array_equal(whole[0][0][k].numpy(), expected[k][0]) for k in range(8))
    for world_size in (2, 4):
        parts = [batches(epoch_loader(windows, drawn, 8, rank=r, world_size=world_size, workers=0))
                 for r in range(world_size)]
        joined = [tuple(torch.cat([part[k][j] for part in parts]) for j in range(3)) for k in range(6)]
        assert_same_batches(joined, whole)
    assert_same_batches(batches(epoch_loader(windows, drawn, 8, skip_batches=4, workers=0)), whole[4:])
    resumed_in_two = batches(epoch_loader(windows, drawn, 8, rank=1, world_size=2, skip_batches=4, workers=0))
    assert_same_batches(resumed_in_two, [tuple(t[4:] for t in batch) for batch in whole[4:]])
    with pytest.raises(SettingsError, match="batch_size=6 is the global batch and must be a multiple of "
                                            "the 4 training processes"):
        epoch_loader(windows, windows.draw_epoch(48, 0.5, 1, 0), 6, rank=0, world_size=4)


def test_loader_workers_give_the_same_batches(store):
    windows = TrainingWindows(store.recordings, 15.0, 5.0)
    drawn = windows.draw_epoch(24, 0.5, seed=2, epoch=3)
    assert_same_batches(batches(epoch_loader(windows, drawn, 4, workers=2)),
                        batches(epoch_loader(windows, drawn, 4, workers=0)))


def test_oversampling_draws_the_positive_share(store):
    windows = TrainingWindows(store.recordings, 10.0, 5.0)
    positive = np.zeros(len(windows), dtype=bool)
    positive[windows.positives] = True
    assert 0.05 < positive.mean() < 0.95
    for share in (0.3, 0.6):
        drawn = windows.draw_epoch(20_000, share, seed=0, epoch=0)
        assert abs(positive[drawn].mean() - share) < 0.02
    assert windows.default_epoch_size(0.5) == 2 * len(windows.negatives)


def test_training_data_prepares_a_corpus_folder_once(corpus, store, tmp_path, caplog):
    config = resolve_config("v3-small")
    settings = make_settings(None, data=str(corpus), out=str(tmp_path / "run"), crop_s=15.0, stride_s=5.0,
                             progress=False)
    with caplog.at_level(logging.INFO, logger="brr"):
        data = load_training_data(settings, config)
        again = load_training_data(settings, config, prepare=False)
    assert data.store.path == tmp_path / "run" / "prepared"
    assert any("is a corpus folder: preparing it into" in m for m in caplog.messages)
    assert any("4 recording(s) prepared, 0 reused" in m for m in caplog.messages)
    assert data.train.window == 15 * RATE and len(data.validation) == 1 and len(data.train.recordings) == 3
    assert [r.key for r in again.validation] == [r.key for r in data.validation]
    assert [r.key for r in split_corpus(store, 0.2, 0)[1]] == [r.key for r in data.validation]
    direct = load_training_data(
        make_settings(None, data=str(store.path), out=str(tmp_path / "run2"), crop_s=15.0), config)
    assert direct.store.path == store.path and not (tmp_path / "run2").exists()
    with pytest.raises(SettingsError, match="prepared with a 60.0 Hz notch"):
        load_training_data(make_settings(None, data=str(store.path), out="o", mains_hz=50.0), config)
    with pytest.raises(SettingsError, match="stride_s=20.0 exceeds the 15.0 s window"):
        load_training_data(make_settings(None, data=str(store.path), out="o", crop_s=15.0, stride_s=20.0),
                           config)


def test_evaluation_reads_a_store_or_a_corpus_folder_alike(corpus, tmp_path):
    one = tmp_path / "one"
    one.mkdir()
    for path in sorted(corpus.glob("synth_s5_0000.*")):
        shutil.copyfile(path, one / path.name)
    prepare_store(one, tmp_path / "store", 60.0)
    torch.manual_seed(0)
    model = build_detector(TINY_MODEL, guards=True).eval()
    postprocess = PostprocessConfig()
    from_store = evaluate_corpus(model, tmp_path / "store", postprocess, stride_s=5.0, batch_size=12)
    assert evaluate_corpus(model, one, postprocess, stride_s=5.0, batch_size=12) == from_store
    assert from_store["event"]["duration_s"] == 120
    with pytest.raises(CorpusError, match="prepared with a 60.0 Hz notch, not mains_hz=50.0"):
        evaluate_corpus(model, tmp_path / "store", postprocess, mains_hz=50.0)


def test_prepare_command_reports_counts_and_fails_on_a_bad_recording(corpus, tmp_path, capsys):
    data, out = copy_corpus(corpus, tmp_path / "corpus"), tmp_path / "store"
    assert prepare_main([str(data), "-o", str(out), "--workers", "2", "--quiet"]) == 0
    assert f"{out}: 4 prepared, 0 reused, 0 failed" in capsys.readouterr().out
    bad = data / "broken.edf"
    bad.write_bytes(b"\0" * 300)
    shutil.copyfile(next(data.glob("*.csv_bi")), bad.with_suffix(".csv_bi"))
    assert prepare_main([str(data), "-o", str(out), "--workers", "1", "--quiet"]) == 1
    captured = capsys.readouterr()
    assert f"{out}: 0 prepared, 4 reused, 1 failed" in captured.out
    assert "broken.edf" in captured.err and len(open_store(out).recordings) == 4
    assert prepare_main([str(data), "-o", str(out), "--workers", "0"]) == 2
    assert "--workers must be >= 1" in capsys.readouterr().err
