"""brr-infer: batch robustness, resume, atomic outputs, stitching and tail, formats, scoring, executors.

Mechanics tests that do not depend on what the network computes use small test runners (below)
behind the same Polygraphy interface; the end-to-end batch, the Ray comparison and the engine
comparison run a randomly initialised v3-small checkpoint.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import re
import shutil
import signal
from pathlib import Path

import numpy as np
import pyedflib
import pytest
from polygraphy.backend.base import BaseRunner
from polygraphy.common import TensorMetadata
from polygraphy.datatype import DataType
from scipy.special import expit

from brr.artifact.load import tuned_postprocess
from brr.artifact.manifest import write_manifest
from brr.cli.export import main as export_main
from brr.cli.infer import build_parser, settings_from_args
from brr.cli.infer import main as infer_main
from brr.data import open_recording, read_recording
from brr.data.annotations import read_csv_bi, read_events_json, read_events_tsv
from brr.data.synthetic import TUH_LABELS, plan_recording, write_recording
from brr.events.postprocess import PostprocessConfig, SegmentedEventDetector, probabilities_to_events
from brr.events.probabilities import PerSecondProbabilities, downsample_probabilities, load_probabilities_npz
from brr.events.scoring import aggregate_scores, score_events
from brr.model import load_checkpoint, save_checkpoint
from brr.output_folder import LOCK_FILE
from brr.runtime import (
    DONE_SUFFIX,
    InferenceInterrupted,
    InferenceSettings,
    InferenceUsageError,
    find_recordings,
    model_windows,
    outputs,
    predict_probabilities,
    run_inference,
    worker,
)

WINDOW = 15360
STRIDE = 60  # one window per minute keeps the real-model tests to a few windows per recording


class ChannelRunner(BaseRunner):
    """Logits = the window's first (preprocessed) channel: stitching must reproduce sigmoid(signal)."""

    calls = 0

    def __init__(self, nonfinite: bool = False):
        super().__init__(prefix="channel-runner")
        self.nonfinite = nonfinite

    def activate_impl(self):
        pass

    def deactivate_impl(self):
        pass

    def get_input_metadata_impl(self):
        return TensorMetadata().add("eeg", DataType.FLOAT32, (-1, 19, WINDOW))

    def infer_impl(self, feed_dict):
        type(self).calls += 1
        logits = np.array(feed_dict["eeg"][:, 0, :], dtype=np.float32)
        if self.nonfinite:
            logits[:, 100] = np.nan
        return {"logits": logits}


@pytest.fixture
def channel_runner(monkeypatch):
    """Every engine path loads a ChannelRunner; ``ChannelRunner.calls`` counts batches."""
    ChannelRunner.calls = 0
    monkeypatch.setattr(worker, "load_engine", lambda engine, *settings: ChannelRunner())
    return ChannelRunner


def _write_edf(path: Path, labels, seconds: int, rate: int = 256) -> Path:
    writer = pyedflib.EdfWriter(str(path), len(labels), file_type=pyedflib.FILETYPE_EDF)
    writer.setSignalHeaders([
        {"label": label, "dimension": "uV", "sample_frequency": rate, "physical_max": 3000.0,
         "physical_min": -3000.0, "digital_max": 32767, "digital_min": -32767}
        for label in labels
    ])
    rng = np.random.default_rng(0)
    for _ in range(seconds):
        writer.writeSamples([20 * rng.standard_normal(rate) for _ in labels])
    writer.close()
    return path


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("infer-corpus")
    good = root / "good"
    # Lengths that are not a multiple of the stride: the tail needs the end-aligned window.
    paths = {
        "a": write_recording(plan_recording(seed=7, index=0, duration_s=150), good / "rec_a.edf"),
        "b": write_recording(plan_recording(seed=7, index=1, duration_s=125), good / "rec_b.edf"),
    }
    batch = root / "batch"
    batch.mkdir()
    shutil.copy(paths["a"], batch / "rec_a.edf")
    shutil.copy(paths["a"].with_suffix(".csv_bi"), batch / "rec_a.csv_bi")
    (batch / "corrupt.edf").write_bytes(np.random.default_rng(1).bytes(4096))
    data = paths["b"].read_bytes()
    (batch / "truncated.edf").write_bytes(data[: len(data) // 2])
    _write_edf(batch / "missing_o2.edf", TUH_LABELS[:-1], 90)
    paths["short"] = write_recording(plan_recording(seed=7, index=2, duration_s=30), batch / "short.edf")
    paths.update(root=root, good=good, batch=batch)
    return paths


@pytest.fixture(scope="session")
def batch_run(corpus, checkpoint, tmp_path_factory):
    """One real brr-infer run over a batch of one good and four broken recordings."""
    out = tmp_path_factory.mktemp("batch-out")
    code = infer_main([str(checkpoint), str(corpus["batch"]), "--out", str(out), "--stride", str(STRIDE),
                       "--reference", str(corpus["batch"]), "--save-probabilities", "--quiet"])
    return code, out, json.loads((out / "summary.json").read_text())


# ----------------------------------------------------------------------------- robustness


def test_quiet_says_nothing_on_a_clean_run_and_the_summary_when_a_recording_failed(corpus, checkpoint, tmp_path,
                                                                                  capsys):
    argv = ["--stride", str(STRIDE), "--quiet"]
    assert infer_main([str(checkpoint), str(corpus["good"]), "--out", str(tmp_path / "clean"), *argv]) == 0
    assert capsys.readouterr().err == ""
    assert infer_main([str(checkpoint), str(corpus["good"]), str(corpus["batch"] / "corrupt.edf"),
                       "--out", str(tmp_path / "failed"), *argv]) == 1
    said = capsys.readouterr().err
    assert "corrupt" in said and "summary:" in said


def test_batch_with_broken_files_completes_the_good_one_and_reports_each_bad_one(batch_run):
    code, out, summary = batch_run
    assert code == 1  # some recordings failed
    by_name = {r["name"]: r for r in summary["recordings"]}
    assert by_name["rec_a"]["status"] == "ok" and by_name["rec_a"]["n_windows"] == 3
    expected = {
        "corrupt": ("UnreadableRecordingError", "not a readable EDF"),
        "truncated": ("TruncatedRecordingError", "truncated"),
        "missing_o2": ("MissingChannelsError", "O2"),
        "short": ("RecordingTooShortError", "too short"),
    }
    for name, (error_type, words) in expected.items():
        entry = by_name[name]
        assert entry["status"] == "failed" and entry["error_type"] == error_type, entry
        assert words in entry["error"] and name in entry["error"]
        assert not list(out.glob(f"{name}*")), f"outputs written for broken {name}"
    assert summary["totals"] == {**summary["totals"], "recordings": 5, "ok": 1, "failed": 4, "skipped": 0}
    assert summary["totals"]["eeg_hours_per_minute"] > 0
    assert sorted(by_name["rec_a"]["outputs"]) == sorted(
        ["rec_a.csv_bi", "rec_a_events.tsv", "rec_a_events.json", "rec_a_probabilities.npz"])


def test_csv_bi_output_parses_and_has_the_tuh_header(batch_run, corpus):
    _, out, _ = batch_run
    lines = (out / "rec_a.csv_bi").read_text().splitlines()
    assert lines[:6] == ["# version = csv_v1.0.0", "# bname = rec_a", "# duration = 150.0000 secs",
                         "# montage_file = nedc_eas_default_montage.txt", "#",
                         "channel,start_time,stop_time,label,confidence"]
    for row in lines[6:]:
        assert re.fullmatch(r"TERM,\d+\.\d{4},\d+\.\d{4},seiz,[01]\.\d{4}", row), row
    events = read_csv_bi(out / "rec_a.csv_bi")
    assert events == read_events_tsv(out / "rec_a_events.tsv")
    assert [(e.start_s, e.stop_s) for e in events] == [
        (round(e.start_s, 4), round(e.stop_s, 4)) for e in read_events_json(out / "rec_a_events.json")]


def test_scores_against_the_reference_are_in_the_summary(batch_run, corpus):
    _, out, summary = batch_run
    entry = next(r for r in summary["recordings"] if r["name"] == "rec_a")
    assert entry["reference"].endswith("rec_a.csv_bi")
    expected = score_events(read_csv_bi(corpus["batch"] / "rec_a.csv_bi"),
                            read_events_json(out / "rec_a_events.json"), 150.0)
    assert entry["scores"] == expected
    assert summary["scores"] == aggregate_scores([expected])


def test_saved_probabilities_are_per_second(batch_run):
    _, out, _ = batch_run
    saved = load_probabilities_npz(out / "rec_a_probabilities.npz")
    assert saved["n_samples"] == 150 * 256 and saved["mean"].shape == (150,) and saved["mean"].dtype == np.float16
    assert np.isfinite(saved["mean"]).all() and (saved["max"] >= saved["mean"]).all()


def test_engine_with_nonfinite_output_fails_the_recording(corpus, tmp_path, monkeypatch):
    monkeypatch.setattr(worker, "load_engine", lambda engine, *settings: ChannelRunner(nonfinite=True))
    summary = run_inference(corpus["good"], [corpus["good"] / "rec_b.edf"], tmp_path, InferenceSettings(stride_s=60))
    (entry,) = summary.entries
    assert entry.status == "failed" and entry.error_type == "EngineOutputError" and "non-finite" in entry.error
    assert summary.exit_code == 1 and not list(tmp_path.glob("rec_b*"))


@pytest.mark.parametrize("argv_tail", [
    ["--resume", "--overwrite"],
    ["--format", "csv_bi,xml"],
    ["--stride", "61"],
    ["--enter", "0.5", "--leave", "0.6"],
])
def test_usage_errors_exit_2(corpus, checkpoint, tmp_path, argv_tail):
    assert infer_main([str(checkpoint), str(corpus["good"]), "--out", str(tmp_path), "--quiet", *argv_tail]) == 2
    assert not (tmp_path / "summary.json").exists()


def test_missing_input_or_engine_exits_2(corpus, checkpoint, tmp_path):
    assert infer_main([str(checkpoint), str(tmp_path / "nope"), "--out", str(tmp_path / "o"), "--quiet"]) == 2
    assert infer_main([str(checkpoint), str(tmp_path / "*.edf"), "--out", str(tmp_path / "o"), "--quiet"]) == 2
    assert infer_main([str(tmp_path / "no-engine"), str(corpus["good"]), "--out", str(tmp_path / "o"),
                       "--quiet"]) == 2


def test_inputs_from_files_directories_and_globs(corpus):
    root = corpus["root"]
    jobs = find_recordings([root / "good", str(root / "good" / "rec_*.edf"), root / "good" / "rec_a.edf"],
                           reference_dir=corpus["batch"])
    assert [j.name for j in jobs] == ["rec_a", "rec_b"]  # found three ways, still one job each
    assert jobs[0].reference == str(corpus["batch"] / "rec_a.csv_bi") and jobs[1].reference is None
    # Recursion keeps sub-folder names, so equal file names do not collide.
    assert {j.name for j in find_recordings([root])} >= {"good/rec_a", "batch/rec_a"}
    with pytest.raises(InferenceUsageError, match="same output name"):
        find_recordings([root / "good" / "rec_a.edf", root / "batch" / "rec_a.edf"])


# ----------------------------------------------------------------------------- resume and interruption


def _output_mtimes(out: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.name not in ("summary.json", LOCK_FILE)}


def test_resume_skips_finished_recordings_and_overwrite_redoes_them(corpus, checkpoint, tmp_path, channel_runner):
    args = [str(checkpoint), str(corpus["good"]), "--out", str(tmp_path), "--stride", "60", "--batch", "8", "--quiet"]
    assert infer_main(args) == 0
    assert channel_runner.calls == 2  # one batch per recording
    before = _output_mtimes(tmp_path)
    assert infer_main(args) == 0  # resume is the default
    assert channel_runner.calls == 2 and _output_mtimes(tmp_path) == before
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert [r["status"] for r in summary["recordings"]] == ["skipped", "skipped"]
    assert [r["n_events"] for r in summary["recordings"]] == [
        len(read_events_json(tmp_path / f"{n}_events.json")) for n in ("rec_a", "rec_b")]

    # An output edited (or lost) after the run makes that recording incomplete: it is redone.
    (tmp_path / "rec_b_events.tsv").write_text("edited\n")
    assert infer_main(args) == 0 and channel_runner.calls == 3
    assert read_events_tsv(tmp_path / "rec_b_events.tsv") == read_csv_bi(tmp_path / "rec_b.csv_bi")
    # Other settings (here a threshold) are not the same outputs: redone, as with --overwrite.
    assert infer_main(args + ["--enter", "0.9"]) == 0 and channel_runner.calls == 5
    assert infer_main(args + ["--enter", "0.9", "--overwrite"]) == 0 and channel_runner.calls == 7


def _assert_only_complete_outputs(out: Path, complete: set[str]) -> None:
    names = {p.name for p in out.iterdir()} - {"summary.json", LOCK_FILE}
    assert not [n for n in names if n.startswith(".")], f"temporary files left: {names}"
    expected = {f"{r}{suffix}" for r in complete
                for suffix in (".csv_bi", "_events.tsv", "_events.json", DONE_SUFFIX)}
    assert names == expected


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=lambda s: s.name)
def test_ctrl_c_or_sigterm_while_writing_leaves_only_complete_outputs(corpus, checkpoint, tmp_path, channel_runner,
                                                                      monkeypatch, signum):
    real_write = outputs.write_events_tsv
    calls = []

    def interrupted_second_time(*args, **kwargs):
        calls.append(args[0])
        if len(calls) == 2:  # rec_b: its csv_bi is already written, the tsv never will be
            os.kill(os.getpid(), signum)
        return real_write(*args, **kwargs)

    monkeypatch.setattr(outputs, "write_events_tsv", interrupted_second_time)
    args = [str(checkpoint), str(corpus["good"]), "--out", str(tmp_path), "--stride", "60", "--batch", "8", "--quiet"]
    assert infer_main(args) == 130
    _assert_only_complete_outputs(tmp_path, {"rec_a"})
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["interrupted"] and [r["name"] for r in summary["recordings"]] == ["rec_a"]

    monkeypatch.setattr(outputs, "write_events_tsv", real_write)
    assert infer_main(args) == 0 and channel_runner.calls == 3  # only rec_b ran again
    _assert_only_complete_outputs(tmp_path, {"rec_a", "rec_b"})


def test_a_stop_file_abandons_the_recording_between_engine_calls(corpus, tmp_path, monkeypatch):
    """How a Ray driver stops its tasks: the file appears after the first engine call; the recording is
    abandoned with RecordingStopped, nothing of it written; a worker whose file is there starts nothing."""
    stop_file = tmp_path / ".stop.0a1b2c3d.tmp"

    class StoppedAfterOneCall(ChannelRunner):
        def infer_impl(self, feed_dict):
            stop_file.touch()
            return super().infer_impl(feed_dict)

    StoppedAfterOneCall.calls = 0
    monkeypatch.setattr(worker, "load_engine", lambda engine, *settings: StoppedAfterOneCall())
    out = tmp_path / "out"
    recording = worker.RecordingWorker(corpus["good"], out, InferenceSettings(stride_s=20, batch_size=1),
                                       stop_file=stop_file)
    job = find_recordings([corpus["good"] / "rec_a.edf"])[0]
    with pytest.raises(worker.RecordingStopped):
        recording(job)
    assert StoppedAfterOneCall.calls == 1 and not list(out.glob("rec_a*"))
    with pytest.raises(worker.RecordingStopped):
        recording(job)
    assert StoppedAfterOneCall.calls == 1


def test_failure_after_the_first_recording_keeps_its_outputs_and_the_summary(corpus, tmp_path, monkeypatch):
    class FailingSecondRecording(ChannelRunner):
        def infer_impl(self, feed_dict):
            if type(self).calls == 1:
                raise RuntimeError("engine crashed")
            return super().infer_impl(feed_dict)

    FailingSecondRecording.calls = 0
    monkeypatch.setattr(worker, "load_engine", lambda engine, *settings: FailingSecondRecording())
    with pytest.raises(RuntimeError, match="engine crashed"):
        run_inference(corpus["good"], [corpus["good"]], tmp_path, InferenceSettings(stride_s=60, batch_size=8))
    _assert_only_complete_outputs(tmp_path, {"rec_a"})
    assert json.loads((tmp_path / "summary.json").read_text())["interrupted"] is True

    class InterruptedEngine(ChannelRunner):
        def infer_impl(self, feed_dict):
            raise KeyboardInterrupt

    monkeypatch.setattr(worker, "load_engine", lambda engine, *settings: InterruptedEngine())
    with pytest.raises(InferenceInterrupted) as caught:  # Ctrl-C in the engine: same guarantee
        run_inference(corpus["good"], [corpus["good"]], tmp_path, InferenceSettings(stride_s=60, batch_size=8))
    assert [e.status for e in caught.value.summary.entries] == ["skipped"]
    _assert_only_complete_outputs(tmp_path, {"rec_a"})


# ----------------------------------------------------------------------------- windows, stitching, tail


@pytest.mark.parametrize("stride_s, batch_size", [(20, 3), (60, 8), (7.5, 4)])
def test_every_sample_gets_the_stitched_probability(corpus, stride_s, batch_size):
    path = corpus["good"] / "rec_b.edf"  # 125 s: no stride divides what is left after the first window
    expected = expit(read_recording(path).signals[0])
    with open_recording(path) as stream:
        windows = list(model_windows(stream, stride_s))
        assert all(w.signals.shape == (19, WINDOW) and w.valid.all() for w in windows)
        assert windows[-1].start_sample == stream.n_samples - WINDOW  # the tail: aligned to the end
        assert sum(w.new_samples for w in windows) == stream.n_samples
    with open_recording(path) as stream, ChannelRunner() as runner:
        trace = np.concatenate(list(predict_probabilities(runner, stream, stride_s, batch_size)))
    assert trace.shape == (125 * 256,) and np.isfinite(trace).all()
    np.testing.assert_allclose(trace, expected, rtol=0, atol=1e-6)


def test_recording_shorter_than_a_window_is_padded_and_masked(corpus):
    path = corpus["short"]
    with open_recording(path, min_duration_s=0) as stream, ChannelRunner() as runner:
        (window,) = model_windows(stream, 10)
        assert window.valid.sum() == 30 * 256 and not window.signals[:, 30 * 256:].any()
        trace = np.concatenate(list(predict_probabilities(runner, stream, 10, 8)))
    np.testing.assert_allclose(trace, expit(read_recording(path, min_duration_s=0).signals[0]), atol=1e-6)


def _bursty_trace(seconds: int, seed: int) -> np.ndarray:
    """Background around 0.4 with bursts of 1-90 s, some separated by gaps shorter than the merge gap."""
    rng = np.random.default_rng(seed)
    trace = rng.uniform(0.2, 0.75, seconds * 256).astype(np.float32)
    position = 0
    while position < trace.size:
        position += int(rng.integers(256, 120 * 256))
        length = int(rng.integers(256, 90 * 256))
        trace[position : position + length] = rng.uniform(0.7, 1.0, len(trace[position : position + length]))
        if rng.random() < 0.3:  # a short dip that closing or merging must bridge
            trace[position + length : position + length + int(rng.integers(10, 600))] = 0.1
    return trace


@pytest.mark.parametrize("seed", [0, 1])
def test_segmented_events_equal_whole_trace_events(seed):
    trace = _bursty_trace(3600, seed)
    config = PostprocessConfig()
    expected = probabilities_to_events(trace, config)
    assert len(expected) > 10
    detector = SegmentedEventDetector(config, min_segment_samples=60 * 256)
    rng = np.random.default_rng(seed)
    position, largest_held = 0, 0
    while position < trace.size:
        step = int(rng.integers(1000, 40000))
        detector.add(trace[position : position + step])
        largest_held = max(largest_held, detector.held_samples)
        position += step
    assert detector.finish() == expected
    assert largest_held < trace.size // 4  # it really held a stretch, not the hour


def test_streamed_per_second_probabilities_equal_downsampling_the_whole_trace():
    trace = np.random.default_rng(0).random(256 * 100 + 77, dtype=np.float32)
    per_second = PerSecondProbabilities()
    for chunk in np.array_split(trace, 13):
        per_second.add(chunk)
    mean, peak = per_second.finish()
    expected_mean, expected_peak = downsample_probabilities(trace)
    np.testing.assert_array_equal(mean, expected_mean)
    np.testing.assert_array_equal(peak, expected_peak)


# ----------------------------------------------------------------------------- engines and executors


def test_ray_executor_writes_the_same_outputs_as_local(batch_run, corpus, checkpoint, tmp_path):
    if importlib.util.find_spec("ray") is None:
        pytest.skip("ray is not installed (pip install '.[ray]')")
    _, local_out, _ = batch_run
    code = infer_main([str(checkpoint), str(corpus["batch"] / "rec_a.edf"), "--out", str(tmp_path),
                       "--stride", str(STRIDE), "--reference", str(corpus["batch"]), "--save-probabilities",
                       "--executor", "ray", "--threads", "2", "--quiet"])
    assert code == 0
    for name in ("rec_a.csv_bi", "rec_a_events.tsv", "rec_a_events.json", "rec_a_probabilities.npz"):
        assert (tmp_path / name).read_bytes() == (local_out / name).read_bytes(), name
    ray_entry = json.loads((tmp_path / "summary.json").read_text())["recordings"][0]
    local_entry = next(r for r in batch_run[2]["recordings"] if r["name"] == "rec_a")
    assert ray_entry["scores"] == local_entry["scores"]


def test_events_identical_on_torch_and_ort_fp32(batch_run, checkpoint, corpus, tmp_path):
    """The ORT fp32 engine exported from the checkpoint finds the events PyTorch found (batch_run)."""
    _, torch_out, _ = batch_run
    engine_dir = tmp_path / "ort-fp32"
    assert export_main([str(checkpoint), "--out", str(engine_dir), "--engine", "fp32",
                        "--backend", "onnxruntime", "--no-verify"]) == 0
    manifests = sorted(engine_dir.rglob("manifest.json"))
    assert manifests, "the export wrote no manifest"
    summary = run_inference(manifests[0].parent, [corpus["batch"] / "rec_a.edf"], tmp_path / "ort",
                            InferenceSettings(stride_s=STRIDE, save_probabilities=True, allow_unverified=True))
    assert [e.status for e in summary.entries] == ["ok"]
    assert read_events_json(tmp_path / "ort" / "rec_a_events.json") == read_events_json(
        torch_out / "rec_a_events.json")
    torch_p = load_probabilities_npz(torch_out / "rec_a_probabilities.npz")["mean"].astype(np.float32)
    ort_p = load_probabilities_npz(tmp_path / "ort" / "rec_a_probabilities.npz")["mean"].astype(np.float32)
    np.testing.assert_allclose(ort_p, torch_p, atol=2e-3)  # float16 per-second storage


def test_validation_tuned_postprocessing_travels_with_the_model(checkpoint, tmp_path):
    """brr-train stores the post-processing it chose on validation; brr-export carries it into the
    manifest; brr-infer applies it by default and a flag overrides one setting of it."""
    trained = tmp_path / "trained"
    tuned = dataclasses.asdict(PostprocessConfig(enter=0.55, leave=0.47))
    save_checkpoint(load_checkpoint(checkpoint), trained, extra={"training": {"postprocess": tuned}})
    assert export_main([str(trained), "--out", str(tmp_path / "engine"), "--engine", "fp32",
                        "--backend", "onnxruntime", "--no-verify"]) == 0
    (manifest,) = (tmp_path / "engine").rglob("manifest.json")
    for engine in (trained, manifest.parent):
        assert tuned_postprocess(engine) == tuned
        args = build_parser().parse_args([str(engine), "x.edf", "--out", "o"])
        assert settings_from_args(args).postprocess == PostprocessConfig(**tuned)
        args = build_parser().parse_args([str(engine), "x.edf", "--out", "o", "--enter", "0.7"])
        assert settings_from_args(args).postprocess == PostprocessConfig(**(tuned | {"enter": 0.7}))
    assert tuned_postprocess(checkpoint) is None  # untrained: the architecture's defaults apply
    args = build_parser().parse_args([str(checkpoint), "x.edf", "--out", "o"])
    assert settings_from_args(args).postprocess == PostprocessConfig()


def test_tampered_engine_is_refused_before_any_recording(checkpoint, corpus, tmp_path):
    """A checkpoint whose config no longer matches its recorded digest: exit 2, nothing written."""
    tampered = tmp_path / "tampered"
    shutil.copytree(checkpoint, tampered)
    meta = json.loads((tampered / "config.json").read_text())
    meta["config"]["guards"] = not meta["config"]["guards"]
    (tampered / "config.json").write_text(json.dumps(meta))
    code = infer_main([str(tampered), str(corpus["good"]), "--out", str(tmp_path / "out"), "--quiet"])
    assert code == 2 and not (tmp_path / "out" / "summary.json").exists()


def test_default_batch_follows_the_engine(checkpoint, tmp_path):
    """One window per call on a CPU (more only costs memory), the TensorRT profile's optimum, 8 on CUDA;
    an explicit --batch wins."""
    assert worker.default_batch(checkpoint, "cpu") == 1
    assert worker.default_batch(checkpoint, "cuda:0") == worker.GPU_BATCH
    trt = tmp_path / "tensorrt-fp16-standard"
    trt.mkdir()
    (trt / "model.engine").write_bytes(b"serialised engine")
    write_manifest(trt, source={"checkpoint": str(checkpoint)}, config=load_checkpoint(checkpoint).config,
                   backend="tensorrt", precision="fp16", ops="standard", opset=18, model_file="model.engine",
                   pinned_nodes=[], batch=(1, 3, 16))
    assert worker.default_batch(trt, "cpu") == 3
    assert worker.RecordingWorker(checkpoint, tmp_path / "out", InferenceSettings()).batch_size == 1
    assert worker.RecordingWorker(checkpoint, tmp_path / "out", InferenceSettings(batch_size=5)).batch_size == 5
