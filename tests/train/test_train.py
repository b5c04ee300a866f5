"""brr.train: a short run lowers the loss, non-finite steps are skipped and named, weight-decay groups,
exact resume, settings validation. A tiny detector config (5 s windows) keeps each step well under a second."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from tiny_models import TINY_MODEL

from brr.cli.train import main as train_main
from brr.data.annotations import SeizureEvent
from brr.data.synthetic import write_corpus
from brr.events.postprocess import PostprocessConfig
from brr.model import build_detector, load_checkpoint
from brr.train import CorpusError, SettingsError, TrainingError, find_corpus, make_settings, train
from brr.train.dataset import TrainingWindows
from brr.train.evaluate import RecordingProbabilities, selection_key, tune_enter_threshold
from brr.train.loop import seed_everything
from brr.train.losses import focal_loss
from brr.train.optim import parameter_groups
from brr.train.store import open_store, prepare_store

SHIPPED_CONFIG = Path(__file__).parents[2] / "brr" / "train" / "configs" / "v3-small-synthetic.yaml"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("corpus")
    write_corpus(directory, recordings=2, minutes=2, seed=3)
    return directory


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("model") / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY_MODEL))
    return str(path)


def tiny_settings(corpus: Path, model: str, out: Path, **overrides):
    values = {"data": str(corpus), "out": str(out), "model": model, "guards": False, "epochs": 1,
              "steps_per_epoch": 4, "batch_size": 1, "lr": 5e-3, "warmup_steps": 0, "stride_s": 5.0,
              "val_stride_s": 5.0, "progress": False, "threads": 1, "loader_workers": 0}
    values.update(overrides)
    return make_settings(None, **values)


def fixed_batch_loss(model, corpus: Path, settings) -> float:
    store = Path(settings.out).parent / "fixed-batch-store"
    prepare_store(corpus, store, 60.0, workers=1, progress=False)
    train_set = TrainingWindows(open_store(store).recordings, 5.0, 5.0)
    indices = (*train_set.positives[:2], *train_set.negatives[:2])
    signals, labels, valid = (torch.from_numpy(np.stack(a)) for a in zip(*map(train_set.window_arrays, indices)))
    with torch.no_grad():
        return float(focal_loss(model.eval()(signals), labels, valid, settings.focal_alpha, settings.focal_gamma))


def test_short_run_lowers_loss_and_writes_checkpoints(corpus, tiny_model, tmp_path):
    # alpha 0.25 makes the untrained network's ~0.5 output clearly wrong for the class balance, so
    # ten steps must move it; learning to tell seizure from background takes longer (a plateau of
    # some tens of steps on this tiny network), which the recipe run covers.
    settings = tiny_settings(corpus, tiny_model, tmp_path / "ckpt", steps_per_epoch=10, batch_size=2,
                             lr=3e-3, focal_alpha=0.25)
    seed_everything(settings.seed)
    initial = build_detector(tiny_model, guards=False)  # the same draw train() makes first
    before = fixed_batch_loss(initial, corpus, settings)
    result = train(settings)
    after = fixed_batch_loss(load_checkpoint(result.last_checkpoint), corpus, settings)
    assert after < 0.8 * before, (before, after)
    assert result.skipped_steps == 0 and result.steps == 10 and len(result.history) == 1
    assert result.best_checkpoint is not None and (result.best_checkpoint / "model.safetensors").is_file()
    assert set(result.history[0]["validation"]["event"]) >= {"sensitivity", "precision", "f1", "fp_per_24h"}
    state = result.last_checkpoint / "training_state.json"
    assert state.is_file() and not list(result.last_checkpoint.glob("*.pt"))


def test_non_finite_step_is_skipped_counted_and_named(corpus, tiny_model, tmp_path, monkeypatch, caplog):
    original = TrainingWindows.window_arrays
    calls = []

    def planted(self, index):
        signals, labels, valid = original(self, index)
        calls.append(index)
        if len(calls) == 2:
            signals = signals.copy()
            signals[3, 100] = np.inf
        return signals, labels, valid

    monkeypatch.setattr(TrainingWindows, "window_arrays", planted)
    with caplog.at_level(logging.INFO, logger="brr.train"):
        result = train(tiny_settings(corpus, tiny_model, tmp_path / "ckpt", steps_per_epoch=3))
    messages = caplog.messages
    assert result.skipped_steps == 1
    assert [(s["step"], s["stage"]) for s in result.skipped] == [(1, "input")]
    assert (Path(result.skipped[0]["incident"]) / "windows.npz").is_file()
    assert result.losses[1] is None and all(v is not None and np.isfinite(v) for v in (result.losses[0], result.losses[2]))
    assert any("step 1" in m and "input" in m for m in messages)
    assert any("1 skipped as non-finite" in m for m in messages)


def test_epoch_of_only_non_finite_steps_stops_training(corpus, tiny_model, tmp_path, monkeypatch):
    original = TrainingWindows.window_arrays

    def poisoned(self, index):
        signals, labels, valid = original(self, index)
        return np.full_like(signals, np.nan), labels, valid

    monkeypatch.setattr(TrainingWindows, "window_arrays", poisoned)
    with pytest.raises(TrainingError, match="every step of epoch 1 was non-finite"):
        train(tiny_settings(corpus, tiny_model, tmp_path / "ckpt", steps_per_epoch=2))


def test_weight_decay_only_on_weights():
    model = build_detector("v3-small")
    decayed_group, plain_group = parameter_groups(model, 0.01)
    assert decayed_group["weight_decay"] == 0.01 and plain_group["weight_decay"] == 0.0
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decayed_group["params"]}
    plain = {names[id(p)] for p in plain_group["params"]}
    assert decayed | plain == set(names.values()) and not decayed & plain
    for name in plain:
        assert name.endswith(("bias", "A_log", "D", "dt_bias", "norm.weight", "original0")) or ".norms." in name, name
    for suffix in ("A_log", ".D", "dt_bias", ".bias", "norm.weight", "norms.0.weight", "original0"):
        assert not any(n.endswith(suffix) for n in decayed), suffix
    assert "node_stream.mamba.0.forward_mamba.in_proj.weight" in decayed
    assert "tcn.dilated.0.parametrizations.weight.original1" in decayed


def test_resume_continues_with_identical_losses(corpus, tiny_model, tmp_path):
    uninterrupted = train(tiny_settings(corpus, tiny_model, tmp_path / "a"))
    # A budget that has already run out stops after the first step and saves OUT/last mid-epoch.
    first = train(tiny_settings(corpus, tiny_model, tmp_path / "b", max_minutes=1e-9))
    assert first.stopped_by_budget and first.steps == 1 and first.history == []
    resumed = train(tiny_settings(corpus, tiny_model, tmp_path / "b", resume=True))
    assert resumed.steps == 4
    assert first.losses + resumed.losses == uninterrupted.losses
    assert resumed.history[0]["train_loss"] == pytest.approx(uninterrupted.history[0]["train_loss"], rel=1e-6)
    with pytest.raises(SettingsError, match="batch_size"):
        train(tiny_settings(corpus, tiny_model, tmp_path / "b", resume=True, batch_size=2))


def test_training_on_crops_validates_on_full_windows(corpus, tiny_model, tmp_path):
    # Tiny model: 5 s windows; crops of 2.5 s = 640 samples, a multiple of downsample x interval (80).
    settings = tiny_settings(corpus, tiny_model, tmp_path / "crops", crop_s=2.5, stride_s=2.5)
    result = train(settings)
    assert result.steps == 4 and result.skipped_steps == 0 and all(loss is not None for loss in result.losses)
    assert result.history[0]["validation"]["event"]["duration_s"] > 0
    for bad in (2.6, 7.5):  # not a multiple of 80 samples; longer than the model's window
        with pytest.raises(SettingsError, match=f"crop_s={bad} must be at most the model's 5.0 s window"):
            train(tiny_settings(corpus, tiny_model, tmp_path / "bad", crop_s=bad))
    with pytest.raises(SettingsError, match="stride_s=5.0 exceeds the 2.5 s window"):
        train(tiny_settings(corpus, tiny_model, tmp_path / "bad", crop_s=2.5))


def test_settings_errors_name_the_key(tmp_path, capsys):
    config = tmp_path / "train.yaml"
    config.write_text("batch_size: 0\n")
    with pytest.raises(SettingsError, match=r"train\.yaml: batch_size must be >= 1"):
        make_settings(config, data="d", out="o")
    config.write_text("learning_rate: 0.1\n")
    with pytest.raises(SettingsError, match="unknown key 'learning_rate'"):
        make_settings(config, data="d", out="o")
    config.write_text("epochs: three\n")
    with pytest.raises(SettingsError, match="epochs must be int"):
        make_settings(config, data="d", out="o")
    with pytest.raises(SettingsError, match="postprocess: need 0 <= leave <= enter"):
        make_settings(None, data="d", out="o", postprocess={"enter": 0.5, "leave": 0.6})
    assert train_main(["--config", str(config), "--data", "d", "--out", "o"]) == 2
    assert "epochs must be int" in capsys.readouterr().err
    shipped = make_settings(SHIPPED_CONFIG, data="d", out="o", epochs=1)
    assert shipped.model == "v3-small" and shipped.epochs == 1 and shipped.tune_threshold
    assert shipped.postprocess_config().min_duration_s == 10.0


def test_corpus_errors_name_the_file(corpus, tmp_path):
    lonely = tmp_path / "corpus"
    lonely.mkdir()
    edf = next(corpus.glob("*.edf"))
    (lonely / edf.name).write_bytes(edf.read_bytes())
    with pytest.raises(CorpusError, match=f"{edf.stem}.edf: no annotation file {edf.stem}.csv_bi"):
        find_corpus(lonely)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CorpusError, match="no .edf or .bdf recordings"):
        find_corpus(empty)


def _scores(sensitivity, f1, fa, sample_f1=0.5):
    return {"event": {"sensitivity": sensitivity, "f1": f1, "fp_per_24h": fa}, "sample": {"f1": sample_f1}}


def test_selection_prefers_detections_within_the_false_alarm_limit():
    silent = _scores(0.0, 0.0, 0.0)  # detects nothing: no false alarm either
    noisy = _scores(1.0, 0.6, 48.0)  # catches everything, one false alarm in 30 min
    good = _scores(0.8, 0.9, 0.0)
    key = lambda s: selection_key(s, "sensitivity_at_fa", 10.0)  # noqa: E731
    assert key(good) > key(noisy) > key(silent)
    assert key(_scores(1.0, 0.95, 5.0)) > key(good)
    assert selection_key(noisy, "f1", 10.0) < selection_key(good, "f1", 10.0)
    # Equal event scores: sample-level F1 decides.
    assert key(_scores(0.8, 0.9, 0.0, sample_f1=0.7)) > key(good)


def test_threshold_tuned_on_validation_is_the_middle_of_those_that_tie():
    """A seizure ramping 0.5 -> 0.92 and a 20 s bump at 0.57: every enter from 0.60 to 0.90 finds the seizure
    and nothing else. Sample F1 prefers 0.60 (more seizure samples), a bump of 0.62 away from a false
    alarm on unseen data; the choice is the middle of the tie, 0.75."""
    fs, seconds = 256, 600
    probabilities = np.full(seconds * fs, 0.1, dtype=np.float32)
    probabilities[100 * fs:180 * fs] = np.linspace(0.5, 0.92, 80 * fs)
    probabilities[180 * fs:200 * fs] = 0.92
    probabilities[350 * fs:370 * fs] = 0.57
    validation = [RecordingProbabilities("v", probabilities, [SeizureEvent(100.0, 200.0)], float(seconds))]
    chosen, scores = tune_enter_threshold(validation, PostprocessConfig(), "sensitivity_at_fa", 10.0)
    assert chosen.enter == pytest.approx(0.75) and chosen.leave == pytest.approx(0.67)
    assert scores["event"]["sensitivity"] == 1.0 and scores["event"]["fp_per_24h"] == 0.0
