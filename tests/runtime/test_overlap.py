"""Overlap inference: the front and rest graphs, their manifest, their verification and brr-infer's overlap mode."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pytest
import torch

from brr.artifact.files import ONNX_FILE
from brr.artifact.load import load_runner, load_split_runners, select_engine
from brr.artifact.manifest import (
    ManifestError,
    read_manifest,
    record_split_verification,
    rewrite_manifest,
    served_split,
    verify_manifest,
    write_manifest,
)
from brr.backends.split import ComposedRunner
from brr.cli.infer import main as infer_main
from brr.data import open_recording
from brr.data.synthetic import plan_recording, write_recording
from brr.diff.composed import verify_split
from brr.diff.inputs import SyntheticWindows
from brr.diff.run import run_diff
from brr.diff.verdict import Verdict
from brr.export.onnx_export import export_split_onnx
from brr.model import PROBE_NAMES, build_detector, save_checkpoint
from brr.model.checkpoint import file_sha256
from brr.model.contract import GraphPart
from brr.model.front import FrontGeometry
from brr.ops.registry import ONNX_OPSET
from brr.runtime.windows import predict_probabilities, predict_probabilities_overlap

PARITY_ATOL = 1e-4
WINDOW = 15360


def _split_artifact(model, directory, model_onnx):
    directory.mkdir(parents=True)
    shutil.copy(model_onnx, directory / ONNX_FILE)
    export_split_onnx(model, directory)
    write_manifest(directory, source={"checkpoint": "in-memory"}, config=model.config, backend="onnxruntime",
                   precision="fp32", ops="standard", opset=ONNX_OPSET, model_file=ONNX_FILE, pinned_nodes=[],
                   split=FrontGeometry.of(model.config))
    return directory


@pytest.fixture(scope="module")
def split_export(small_model, small_exports, tmp_path_factory):
    """v3-small's fp32 ONNX folder with its front and rest graphs, unverified (inside an export's --out)."""
    return _split_artifact(small_model, tmp_path_factory.mktemp("export") / "onnx-standard",
                           small_exports["standard"].model)


@pytest.fixture(scope="module")
def edf(tmp_path_factory):
    """75 s: windows at 0 and 10 s, the second one moved back to end with the recording (out of step phase)."""
    return write_recording(plan_recording(seed=3, index=0, duration_s=75), tmp_path_factory.mktemp("edf") / "rec.edf")


def test_the_front_and_rest_graphs_compose_to_the_detector(split_export, small_model):
    x = np.random.default_rng(1).standard_normal((1, 19, WINDOW)).astype(np.float32)
    with torch.inference_mode():
        _, expected = small_model(torch.from_numpy(x), return_probes=True)
    with ComposedRunner(load_split_runners(split_export, probes=True)) as runner:
        got = runner.infer({"eeg": x})
    assert tuple(got) == PROBE_NAMES
    for name in ("tcn", "electrodes", "node_stream", "logits"):
        assert np.abs(got[name] - expected[name].numpy()).max() <= PARITY_ATOL, name
    # The front runs on any span, the rest on a window's steps.
    front = onnx.load(str(split_export / GraphPart.FRONT.file))
    assert [d.dim_param for d in front.graph.input[0].type.tensor_type.shape.dim] == ["batch", "", "samples"]
    span = np.random.default_rng(2).standard_normal((1, 19, 20000)).astype(np.float32)
    with load_split_runners(split_export) as split, torch.inference_mode():
        features = split.run_front(span)
        assert np.abs(features - small_model.forward_front(torch.from_numpy(span)).numpy()).max() <= PARITY_ATOL
    assert features.shape == (1, 19, 20000 // 16, small_model.config.electrode_dim)


def test_the_manifest_hashes_both_graphs_and_serves_them_once_verified(split_export, tmp_path):
    artifact = shutil.copytree(split_export, tmp_path / "onnx-standard")
    manifest = verify_manifest(artifact)
    assert {part.file for part in GraphPart} <= set(manifest["files"])
    assert manifest["split"]["geometry"] == {"left": 45, "right": 45, "downsample": 16, "window": WINDOW}
    with pytest.raises(ManifestError, match="never verified"):
        served_split(artifact, manifest)
    record_split_verification(artifact, {"passed": True, "verdict": "clean"})
    files, geometry = served_split(artifact, read_manifest(artifact))
    assert files[GraphPart.REST] == artifact / "rest.onnx" and geometry == FrontGeometry(45, 45, 16, WINDOW)
    # Another rest, with the file hashes rewritten to match: not the graph that was verified.
    manifest = read_manifest(artifact)
    (artifact / "rest.onnx").write_bytes((artifact / "rest.onnx").read_bytes() + b"\0")
    manifest["files"]["rest.onnx"] = file_sha256(artifact / "rest.onnx")
    rewrite_manifest(artifact, manifest)
    with pytest.raises(ManifestError, match="not the files that were verified"):
        load_split_runners(artifact, require_verified=True)


def test_an_artifact_without_the_graphs_is_refused_for_overlap(small_exports, split_export, tmp_path):
    plain = tmp_path / "export" / "onnx-plugin"
    plain.mkdir(parents=True)
    shutil.copy(small_exports["standard"].model, plain / ONNX_FILE)
    write_manifest(plain, source={}, config=build_detector("v3-small").config, backend="onnxruntime",
                   precision="fp32", ops="plugin", opset=ONNX_OPSET, model_file=ONNX_FILE, pinned_nodes=[])
    with pytest.raises(ManifestError, match="brr-export --split"):
        load_split_runners(plain)
    with pytest.raises(ManifestError, match="brr-export --split"):
        select_engine(plain.parent, split=True)
    shutil.copytree(split_export, plain.parent / "onnx-standard")
    assert select_engine(plain.parent, split=True) == plain.parent / "onnx-standard"


def test_overlap_inference_gives_the_per_window_probabilities(split_export, small_model, edf, tmp_path):
    checkpoint = save_checkpoint(small_model, tmp_path / "ckpt")
    with open_recording(edf) as stream:
        with load_split_runners(split_export) as split:
            overlap = np.concatenate(list(predict_probabilities_overlap(split, stream, 10.0, batch_size=3,
                                                                        chunk_samples=7000)))
        with load_runner(checkpoint) as runner:
            per_window = np.concatenate(list(predict_probabilities(runner, stream, 10.0, 1)))
    assert overlap.shape == per_window.shape == (75 * 256,)
    assert np.abs(overlap - per_window).max() <= PARITY_ATOL


def test_a_recording_shorter_than_a_window_gets_the_per_window_answer(small_model, tmp_path):
    short = write_recording(plan_recording(seed=4, index=0, duration_s=40), tmp_path / "short.edf")
    checkpoint = save_checkpoint(small_model, tmp_path / "ckpt")
    with open_recording(short, min_duration_s=0) as stream:
        with load_split_runners(checkpoint) as split:
            overlap = np.concatenate(list(predict_probabilities_overlap(split, stream, 10.0, 1, WINDOW)))
        with load_runner(checkpoint) as runner:
            per_window = np.concatenate(list(predict_probabilities(runner, stream, 10.0, 1)))
    assert overlap.shape == per_window.shape == (40 * 256,)
    assert np.abs(overlap - per_window).max() <= 1e-6


def test_brr_infer_serves_the_verified_front_and_rest_of_an_export(split_export, small_model, edf, tmp_path):
    export = shutil.copytree(split_export.parent, tmp_path / "export")
    out = tmp_path / "events"
    argv = [str(export), str(edf), "-o", str(out), "--window-mode", "overlap", "-q"]
    assert infer_main(argv) == 2  # never verified
    verification = verify_split(small_model, export / "onnx-standard", tmp_path / "verification", WINDOW,
                                synthetic_windows=1)
    assert verification.passed and verification.report.engines[0].name == "onnx-standard-front+rest"
    recorded = read_manifest(export / "onnx-standard")["split"]["verification"]
    assert recorded["passed"] and set(recorded) >= {"front_sha256", "rest_sha256", "verdict", "atol"}
    assert infer_main(argv) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert [r["status"] for r in summary["recordings"]] == ["ok"]
    assert summary["settings"]["window_mode"] == "overlap"
    assert (out / "rec_events.tsv").is_file()


def test_the_diff_judges_a_front_and_rest_of_another_model_divergent(split_export, tmp_path):
    torch.manual_seed(11)
    other = build_detector("v3-small").eval()
    report = run_diff(other, [f"split:{split_export}"], SyntheticWindows(1, WINDOW), fail_on="divergence")
    assert report.failed and report.engines[0].verdict is Verdict.DIVERGENCE
    assert report.engines[0].name == "onnx-standard-front+rest"


def test_a_stride_off_the_front_steps_is_refused(small_model, edf, tmp_path, capsys):
    checkpoint = save_checkpoint(small_model, tmp_path / "ckpt")
    argv = [str(checkpoint), str(edf), "-o", str(tmp_path / "out"), "--window-mode", "overlap",
            "--stride", str(2568 / 256), "-q"]
    assert infer_main(argv) == 2
    assert "whole 16-sample steps" in capsys.readouterr().err
