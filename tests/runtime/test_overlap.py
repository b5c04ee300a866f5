"""Overlap inference: the front and rest graphs, their manifest, their verification and brr-infer's overlap mode."""

from __future__ import annotations

import json
import shutil
from collections import Counter

import numpy as np
import onnx
import pytest
import torch

from brr.artifact.files import ONNX_FILE
from brr.artifact.load import load_runner, load_split_runners, select_engine
from brr.artifact.manifest import (
    ManifestError,
    SplitGraphs,
    read_manifest,
    record_split_verification,
    rewrite_manifest,
    served_split,
    verify_manifest,
    write_manifest,
)
from brr.backends.base import EngineBuildError
from brr.backends.split import ComposedRunner
from brr.cli.infer import main as infer_main
from brr.data import open_recording
from brr.data.synthetic import plan_recording, write_recording
from brr.diff.composed import ProbeJudge, WindowsFed, verify_split
from brr.diff.inputs import SyntheticWindows
from brr.diff.repro import Judging
from brr.diff.run import run_diff
from brr.diff.verdict import Verdict
from brr.export.onnx_export import export_split_onnx
from brr.export.precision_plan import PrecisionPlan, PrecisionPlanError, load_plan
from brr.export.run import ExportRequest, export_artifacts
from brr.model import PROBE_NAMES, build_detector, save_checkpoint
from brr.model.checkpoint import file_sha256
from brr.model.contract import GraphPart
from brr.model.front import FrontGeometry
from brr.onnx.stages import node_stages
from brr.ops.registry import ONNX_OPSET
from brr.runtime.windows import predict_probabilities, predict_probabilities_overlap
from brr.tolerances import TOLERANCES

PARITY_ATOL = 1e-4
WINDOW = 15360


def _split_artifact(model, directory, model_onnx):
    directory.mkdir(parents=True)
    shutil.copy(model_onnx, directory / ONNX_FILE)
    export_split_onnx(model, directory)
    write_manifest(directory, source={"checkpoint": "in-memory"}, config=model.config, backend="onnxruntime",
                   precision="fp32", ops="standard", opset=ONNX_OPSET, model_file=ONNX_FILE, pinned_nodes=[],
                   split=SplitGraphs(FrontGeometry.of(model.config)))
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
    """Equal to fp32 rounding, but where that rounding tips an adjacency top-k near-tie (two correct answers,
    as brr-diff judges them at the probes; which windows, if any, depends on the CPU's rounding)."""
    checkpoint = save_checkpoint(small_model, tmp_path / "ckpt")
    with open_recording(edf) as stream:
        with load_split_runners(split_export) as split:
            shared = WindowsFed(split)
            overlap = np.concatenate(list(predict_probabilities_overlap(shared, stream, 10.0, batch_size=3,
                                                                        chunk_samples=7000)))
        with load_runner(checkpoint) as runner:
            own = WindowsFed(runner)
            per_window = np.concatenate(list(predict_probabilities(own, stream, 10.0, 1)))
    assert overlap.shape == per_window.shape == (75 * 256,)
    assert len(own.logits) == len(shared.logits) > 1
    moved = [i for i, (a, b) in enumerate(zip(own.logits, shared.logits)) if np.abs(a - b).max() > PARITY_ATOL]
    if not moved:
        assert np.abs(overlap - per_window).max() <= PARITY_ATOL
        return
    with load_runner(checkpoint, probes=True) as whole, load_split_runners(checkpoint, probes=True) as parts:
        judge = ProbeJudge(whole, parts.rest, Judging.of(whole), *TOLERANCES["fp32"])
        for i in moved:
            judged = judge(f"window {i}", own.inputs[i], shared.inputs[i])
            assert judged.verdict is Verdict.BASIS_AMBIGUOUS, (i, judged.verdict, judged.first_divergent_stage)
            assert judged.first_divergent_stage in ("adjacency", "laplacian_pe")


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


def test_the_parts_carry_the_stages_and_the_plan_of_the_whole_graph(split_export):
    whole = split_export / ONNX_FILE
    parts = {part: split_export / part.file for part in GraphPart}
    stages = {path.name: Counter(node_stages(onnx.load(str(path), load_external_data=False)).values())
              for path in (whole, *parts.values())}
    assert set(stages["front.onnx"]) == {"tcn", "electrodes"}
    assert stages["rest.onnx"] == Counter({stage: n for stage, n in stages[ONNX_FILE].items()
                                           if stage not in ("tcn", "electrodes")})
    # The plan's stages and modules resolve on each part's own nodes.
    pinned_whole = load_plan("bf16-fp32-tcn").resolve(whole, node_stages(onnx.load(str(whole))))
    by_part = load_plan("bf16-fp32-tcn").resolve_parts(whole, list(parts.values()))
    rest_stages = node_stages(onnx.load(str(parts[GraphPart.REST])))
    assert len(by_part[parts[GraphPart.REST]]) == sum(
        stages[ONNX_FILE][s] for s in ("edge_similarity", "laplacian_pe")) + sum(
        rest_stages[n] not in ("edge_similarity", "laplacian_pe") for n in by_part[parts[GraphPart.REST]])
    assert {rest_stages[n] for n in by_part[parts[GraphPart.REST]]} >= {"edge_similarity", "laplacian_pe"}
    assert by_part[parts[GraphPart.FRONT]]  # the TCN
    # A plan of the whole graph's node names (brr-calibrate's) pins the same nodes in the parts, under the
    # parts' own names: the same number of each op type, none lost.
    named = PrecisionPlan(fp32_nodes=tuple(pinned_whole), source="calibrated.json")
    mapped = named.resolve_parts(whole, list(parts.values()))
    op_types = {n.name: n.op_type for path in (whole, *parts.values()) for n in onnx.load(str(path)).graph.node
                if path == whole or n.name in set(mapped[path])}
    whole_ops = Counter(n.op_type for n in onnx.load(str(whole)).graph.node if n.name in set(pinned_whole))
    part_ops = Counter(op for path in parts.values() for op in
                       (n.op_type for n in onnx.load(str(path)).graph.node if n.name in set(mapped[path])))
    assert part_ops == whole_ops and op_types
    with pytest.raises(PrecisionPlanError, match=r"calibrated.json: 1 node\(s\) not in .*model.onnx: node_nowhere"):
        PrecisionPlan(fp32_nodes=("node_nowhere",), source="calibrated.json").resolve_parts(whole, list(parts.values()))


@pytest.fixture(scope="module")
def openvino_split(small_model, tmp_path_factory):
    """v3-small exported by brr-export --split to an OpenVINO bf16 engine (the plan's fp32 islands kept), its
    front and rest verified composed."""
    root = tmp_path_factory.mktemp("ov-split")
    checkpoint = save_checkpoint(small_model, root / "ckpt")
    plan = root / "islands.json"
    plan.write_text(json.dumps({"fp32_stages": ["edge_similarity", "laplacian_pe"]}))
    result = export_artifacts(ExportRequest(checkpoint, root / "export", engine="bf16", backend="openvino",
                                            precision_plan=plan, split=True))
    verification = verify_split(small_model, result.engine_dir, root / "verification", WINDOW, synthetic_windows=1)
    return result, verification


def test_an_openvino_engine_is_built_and_verified_as_front_and_rest(openvino_split, edf):
    result, verification = openvino_split
    assert verification.passed, verification.summary()
    manifest = verify_manifest(result.engine_dir)
    parts = manifest["split"]["parts"]
    assert {part: parts[part]["files"] for part in parts} == {"front": ["front.xml", "front.bin"],
                                                              "rest": ["rest.xml", "rest.bin"]}
    # The plan's islands are all in the rest, under the rest graph's node names, and pinned there.
    rest_stages = node_stages(onnx.load(str(result.reference_dir / GraphPart.REST.file)))
    assert parts["front"]["fp32_pinned_nodes"] == []
    assert {rest_stages[n] for n in parts["rest"]["fp32_pinned_nodes"]} == {"edge_similarity", "laplacian_pe"}
    assert parts["rest"]["settings"]["fp32_layers"] > 0
    # Overlap inference serves it (not the unverified fp32 graphs beside it) and gives its per-window answer.
    assert select_engine(result.engine_dir.parent, split=True) == result.engine_dir
    with open_recording(edf) as stream:
        with load_split_runners(result.engine_dir, require_verified=True) as split:
            overlap = np.concatenate(list(predict_probabilities_overlap(split, stream, 10.0, 1, WINDOW)))
        with load_runner(result.engine_dir) as runner:
            per_window = np.concatenate(list(predict_probabilities(runner, stream, 10.0, 1)))
    assert np.abs(overlap - per_window).max() <= 0.02


def test_a_changed_weights_file_of_a_part_is_not_served(openvino_split, tmp_path):
    result, _ = openvino_split
    engine = shutil.copytree(result.engine_dir, tmp_path / result.engine_dir.name)
    manifest = read_manifest(engine)
    weights = engine / "front.bin"
    changed = bytearray(weights.read_bytes())
    changed[-1] ^= 0xFF
    weights.write_bytes(bytes(changed))
    manifest["files"]["front.bin"] = file_sha256(weights)  # the file hashes rewritten to match
    rewrite_manifest(engine, manifest)
    with pytest.raises(ManifestError, match="not the files that were verified"):
        load_split_runners(engine, require_verified=True)


def test_an_engine_that_cannot_be_split_says_so_before_building(small_model, tmp_path):
    checkpoint = save_checkpoint(small_model, tmp_path / "ckpt")
    with pytest.raises(EngineBuildError, match="int8 engines are built for the whole detector only"):
        export_artifacts(ExportRequest(checkpoint, tmp_path / "export", engine="int8", backend="onnxruntime",
                                       split=True))
    assert not (tmp_path / "export" / "onnxruntime-int8-standard" / "model.onnx").exists()


def test_an_onnxruntime_fp16_engine_is_built_as_front_and_rest(small_model, tmp_path):
    checkpoint = save_checkpoint(small_model, tmp_path / "ckpt")
    result = export_artifacts(ExportRequest(checkpoint, tmp_path / "export", engine="fp16", backend="onnxruntime",
                                            split=True))
    manifest = verify_manifest(result.engine_dir)
    parts = manifest["split"]["parts"]
    assert {part: parts[part]["files"] for part in parts} == {"front": ["front.onnx"], "rest": ["rest.onnx"]}
    assert parts["front"]["fp32_pinned_nodes"] == [] and parts["rest"]["fp32_pinned_nodes"]
    assert list(manifest["settings"]["strong_typing"]) == [ONNX_FILE]  # the whole graph's pins, checked on it alone
    x = np.random.default_rng(5).standard_normal((1, 19, WINDOW)).astype(np.float32)
    with ComposedRunner(load_split_runners(result.engine_dir)) as composed, load_runner(result.engine_dir) as whole:
        assert np.abs(composed.infer({"eeg": x})["logits"] - whole.infer({"eeg": x})["logits"]).max() <= 0.05


def test_brr_infer_runs_overlap_by_default_where_the_pair_passed(openvino_split, split_export, small_model, edf,
                                                                 tmp_path, capsys):
    result, _ = openvino_split
    runs = iter(range(100))

    def window_mode(engine, *flags):
        out = tmp_path / f"run{next(runs)}"
        assert infer_main([str(engine), str(edf), "-o", str(out), *flags]) == 0
        return json.loads((out / "summary.json").read_text())["settings"]["window_mode"]

    assert window_mode(result.engine_dir.parent) == "overlap"  # the export's engine, its pair verified
    assert "window mode overlap: its front and rest passed their verification" in capsys.readouterr().err
    # Its whole model was never verified: per-window serves it only when allowed.
    assert window_mode(result.engine_dir, "--stride", "60", "--allow-unverified") == "per-window"
    assert "share no samples" in capsys.readouterr().err
    assert window_mode(result.engine_dir, "--stride", str(2568 / 256), "--allow-unverified") == "per-window"
    assert "not a whole number of the front's 16-sample steps" in capsys.readouterr().err
    assert window_mode(split_export, "--allow-unverified") == "per-window"  # its pair never verified
    assert "never verified" in capsys.readouterr().err
    assert window_mode(save_checkpoint(small_model, tmp_path / "ckpt")) == "per-window"
