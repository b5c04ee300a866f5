"""The README's main job, end to end on a tiny corpus: every stage runs and a rerun reuses them."""

import logging

import pytest

from brr.artifact.manifest import read_manifest
from brr.pipeline import PipelineSettings, held_out_verdict, run_pipeline
from brr.runtime import InferenceSummary, RecordingEntry


def test_pipeline_runs_end_to_end_and_reuses_its_work(tmp_path, caplog):
    settings = PipelineSettings(workdir=tmp_path, train_recordings=3, holdout_recordings=1,
                                recording_minutes=2, train_epochs=1, train_steps_per_epoch=2, infer_stride_s=60)
    caplog.set_level(logging.INFO, logger="brr.pipeline")
    result = run_pipeline(settings)
    lines = [r.getMessage() for r in caplog.records if r.name == "brr.pipeline"]
    assert [row["probe"] for row in result.probe_rows][-1] == "logits"
    assert result.verifications["onnxruntime-fp16"].passed
    # It serves the fastest engine whose verification passed, and its verdict names it.
    timings = {path.name: read_manifest(path)["verification"].get("serving_s_per_window")
               for path in (tmp_path / "engines").iterdir() if (path / "manifest.json").is_file()
               and read_manifest(path)["verification"]}
    passed = {name: seconds for name, seconds in timings.items() if seconds is not None}
    assert result.served.name == min(passed, key=passed.get)
    assert result.verdict.startswith("[verdict] FAIL") or result.verdict.endswith(f"verified engine {result.served.name}")
    assert [e.status for e in result.inference.entries] == ["ok"]
    assert (tmp_path / "events" / "summary.json").is_file()
    # The run ends with its verdict, and the exit code follows it.
    assert lines[-1] == result.verdict and result.verdict.startswith(("[verdict] PASS: ", "[verdict] FAIL: "))
    assert result.exit_code == (0 if result.verdict.startswith("[verdict] PASS") else 1)
    caplog.clear()
    run_pipeline(settings)
    again = [r.getMessage() for r in caplog.records if r.name == "brr.pipeline"]
    assert any(line.startswith("[train] reusing") for line in again)
    assert any(line.startswith("[corpus] reusing") for line in again)


def _summary(sensitivity, false_alarms, statuses=("ok",)):
    return InferenceSummary("engine", "out", {}, entries=[RecordingEntry(f"rec{i}.edf", f"rec{i}", s) for i, s in enumerate(statuses)],
                            scores={"event": {"sensitivity": sensitivity, "fp_per_24h": false_alarms}})


@pytest.mark.parametrize("summary, verified, passed, says", [
    (_summary(1.0, 0.0), True, True, "PASS: the held-out seizures were found"),
    (_summary(0.8, 0.0), True, False, "event sensitivity 0.80 < 0.9"),
    (_summary(None, None), True, False, "event sensitivity n/a < 0.9"),
    (_summary(1.0, 24.0), True, False, "24.00 false alarms/24h > 10"),
    (_summary(1.0, 0.0), False, False, "the engine it served, onnxruntime-fp16-standard, failed its verification"),
    (_summary(1.0, 0.0, ("ok", "failed")), True, False, "1 recording(s) failed: rec1"),
])
def test_held_out_verdict_holds_the_run_to_its_bounds(summary, verified, passed, says):
    ok, line = held_out_verdict(PipelineSettings(workdir="w"), summary, verified, "onnxruntime-fp16-standard")
    assert ok is passed and says in line and line.startswith("[verdict] ")
