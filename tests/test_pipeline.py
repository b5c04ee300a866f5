"""The README's main job, end to end on a tiny corpus: every stage runs and a rerun reuses them."""

from brr.pipeline import PipelineSettings, run_pipeline


def test_pipeline_runs_end_to_end_and_reuses_its_work(tmp_path):
    settings = PipelineSettings(workdir=tmp_path, train_recordings=3, holdout_recordings=1,
                                recording_minutes=2, train_epochs=1, train_steps_per_epoch=2, infer_stride_s=60)
    lines: list[str] = []
    result = run_pipeline(settings, lines.append)
    assert [row["probe"] for row in result.probe_rows][-1] == "logits"
    assert result.verifications["onnxruntime-fp16"].passed
    assert [e.status for e in result.inference.entries] == ["ok"]
    assert (tmp_path / "events" / "summary.json").is_file()
    # Two training steps detect nothing: the run says so in one line and fails.
    assert result.verdict.startswith("[verdict] FAIL: ") and result.exit_code == 1
    assert lines[-1] == result.verdict
    again: list[str] = []
    run_pipeline(settings, again.append)
    assert any(line.startswith("[train] reusing") for line in again)
    assert any(line.startswith("[corpus] reusing") for line in again)
