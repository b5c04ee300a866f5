"""brr-train's non-finite steps as a user meets them: the seed's incident (an edge lift so large that every
logit is NaN from the first batch) started with --init from the weights it happened with, named at the edge
stream's module, saved, stopped after the consecutive limit, and reproduced by the printed brr-diff command;
an overflow only fp16 autocast makes; mixed precision keeps fp32 weights; --init is checked."""

from __future__ import annotations

import json
import shlex

import numpy as np
import pytest
import torch
import yaml
from tiny_models import TINY_MODEL

from brr.cli.diff import main as diff_main
from brr.cli.train import main as train_main
from brr.data.synthetic import write_corpus
from brr.model import build_detector, load_checkpoint, save_checkpoint
from brr.train import SettingsError, make_settings, train
from brr.train.loop import TrainingError


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("incident")
    write_corpus(folder / "corpus", recordings=2, minutes=1, seed=7)
    (folder / "tiny.yaml").write_text(yaml.safe_dump(TINY_MODEL))
    return folder


def settings_for(corpus, out, **overrides):
    values = {"data": str(corpus / "corpus"), "out": str(out), "model": str(corpus / "tiny.yaml"), "guards": False,
              "epochs": 1, "steps_per_epoch": 4, "batch_size": 2, "warmup_steps": 0, "stride_s": 5.0,
              "val_stride_s": 5.0, "progress": False, "threads": 1, "loader_workers": 0}
    values.update(overrides)
    return make_settings(None, **values)


def seed_incident_weights(corpus, folder):
    """The seed's incident: the edge stream's 1 -> d lift initialised so large that the first Mamba's input
    projection overflows, and every logit is NaN from the first batch."""
    model = build_detector(str(corpus / "tiny.yaml"), guards=False)
    with torch.no_grad():
        model.edge_stream.lift.weight.fill_(3e38)
    save_checkpoint(model, folder)
    return folder


def test_seed_incident_is_named_at_the_edge_stream_saved_and_reproduced(corpus, tmp_path, capsys):
    weights = seed_incident_weights(corpus, tmp_path / "incident-weights")
    out = tmp_path / "run"
    code = train_main(["--model", str(corpus / "tiny.yaml"), "--data", str(corpus / "corpus"), "-o", str(out),
                       "--init", str(weights), "--epochs", "1", "--steps-per-epoch", "5", "--batch-size", "2",
                       "--loader-workers", "0", "--threads", "1", "-q", "--config", str(_config(corpus, tmp_path))])
    message = capsys.readouterr().err
    assert code == 1
    # What the reader must learn: where (module path and class), which operation, why, and how to replay it.
    assert "3 consecutive steps were non-finite" in message
    assert "at edge_stream." in message and "fp32" in message
    assert "brr-diff" in message and "windows.npz" in message
    incident = next((out / "nonfinite").iterdir())
    report = json.loads((incident / "report.json").read_text())
    assert report["step"] == 0 and report["finding"]["module"].startswith("edge_stream.")
    assert len(report["windows"]) == 2 and all("@" in w for w in report["windows"])
    saved = np.load(incident / "windows.npz")
    assert saved["eeg"].shape == (2, 19, 1280) and np.isfinite(saved["eeg"]).all()
    assert float(load_checkpoint(incident / "weights").edge_stream.lift.weight.detach().abs().min()) == pytest.approx(3e38)
    # The printed command replays the windows: fp32 itself is non-finite there.
    command = shlex.split(report["repro_command"])
    assert command[0] == "brr-diff"
    assert diff_main([*command[1:], "--no-node-level"]) == 1
    diff = json.loads((incident / "diff-report" / "report.json").read_text())
    assert diff["verdict"] == "nonfinite_fp32"


def _config(corpus, tmp_path):
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump({"guards": False, "warmup_steps": 0, "stride_s": 5.0, "val_stride_s": 5.0,
                                    "max_consecutive_nonfinite": 3}))
    return path


def test_mixed_precision_keeps_fp32_weights_and_trains(corpus, tmp_path):
    result = train(settings_for(corpus, tmp_path / "bf16", precision="bf16", steps_per_epoch=3))
    assert result.skipped_steps == 0 and all(np.isfinite(v) for v in result.losses)
    checkpoint = load_checkpoint(result.last_checkpoint)
    assert {p.dtype for p in checkpoint.parameters()} == {torch.float32}


def test_init_starts_fresh_from_given_weights_and_is_checked(corpus, tmp_path):
    first = train(settings_for(corpus, tmp_path / "first", steps_per_epoch=2))
    second = train(settings_for(corpus, tmp_path / "second", steps_per_epoch=2, init=str(first.last_checkpoint)))
    state = json.loads((second.last_checkpoint / "training_state.json").read_text())
    assert state["loop"]["step"] == 2  # a new run: its own schedule from step 0
    with pytest.raises(SettingsError, match="exclude each other"):
        train(settings_for(corpus, tmp_path / "second", init=str(first.last_checkpoint), resume=True))
    other = build_detector("v3-small", guards=False)
    save_checkpoint(other, tmp_path / "other-model")
    with pytest.raises(SettingsError, match="differs from"):
        train(settings_for(corpus, tmp_path / "third", init=str(tmp_path / "other-model")))


def test_training_error_names_the_stop(corpus, tmp_path):
    weights = seed_incident_weights(corpus, tmp_path / "weights")
    with pytest.raises(TrainingError, match="consecutive steps were non-finite"):
        train(settings_for(corpus, tmp_path / "run", init=str(weights), max_consecutive_nonfinite=2))
