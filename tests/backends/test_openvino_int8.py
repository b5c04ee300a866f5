"""int8 OpenVINO engines (NNCF): only the plan's free layers quantized, fp32 given back where validation asks."""

from __future__ import annotations

import builtins
import json

import numpy as np
import onnx
import openvino as ov
import pytest

from brr.backends import BACKENDS
from brr.backends.base import EngineBuildError, Int8Calibration
from brr.backends.openvino import quantize
from brr.backends.openvino.loader import CompiledModel, compile_model, layer_nodes, openvino_extensions
from brr.errors import DependencyUnavailable
from brr.export.precision_plan import load_plan
from brr.model import OUTPUT_NAME
from brr.model.contract import GraphPart
from brr.onnx.stages import node_stages

pytest.importorskip("nncf", reason="int8 OpenVINO engines need the int8 extra (NNCF)")


def _windows(count: int, samples: int, scale: float, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [(scale * rng.standard_normal((1, 19, samples))).astype(np.float32) for _ in range(count)]


def _fake_quantized_nodes(model_xml, onnx_path) -> set[str]:
    """The ONNX nodes whose layers read a FakeQuantize'd activation in the IR."""
    model = CompiledModel(model_xml, extensions=openvino_extensions("plugin")).read()
    layers = quantize.int8_layers(model, [op.get_friendly_name() for op in model.get_ordered_ops()])
    return set(layer_nodes(layers, onnx_path, _all_nodes(onnx_path)).values())


def _all_nodes(onnx_path) -> list[str]:
    return [n.name for n in onnx.load(str(onnx_path), load_external_data=False).graph.node]


def _logits(model_xml, window: np.ndarray, hint: str) -> np.ndarray:
    compiled = CompiledModel(model_xml, hint, extensions=openvino_extensions("plugin"))()
    return compiled({"eeg": window})[compiled.output(OUTPUT_NAME)]


def test_int8_tcn_quantizes_only_the_tcn_and_keeps_validation_within_the_margin(small_exports, small_model, tmp_path):
    export = small_exports["plugin"]
    stages = json.loads(export.stages.read_text())
    pinned = load_plan("int8-tcn").resolve(export.model, stages)
    samples = small_model.config.window_samples
    from brr.diff.inputs import verification_windows
    calibration = _windows(4, samples, 1.0, 0) + [feed["eeg"] for feed in verification_windows(samples)]
    built = BACKENDS["openvino"].build(export.model, "plugin", tmp_path, "int8", pinned, (1, 1, 1),
                                       small_model.config, Int8Calibration(calibration))
    settings = built.settings
    print(f"\nint8 layers {settings['int8_layers']}, fp32 restored {settings['fp32_restored_layers']}")
    assert settings["inference_precision"] == "f32" and settings["quantizer"].startswith("nncf ")
    assert settings["int8_layers"], "no TCN convolution was left in int8"
    quantized = _fake_quantized_nodes(tmp_path / built.model_file, export.model)
    assert quantized and {stages[node] for node in quantized} == {"tcn"}
    # The verification windows export verifies with were validated: within half the int8 tolerance of fp32.
    fp32 = tmp_path / "fp32"
    BACKENDS["openvino"].build(export.model, "plugin", fp32, "fp32", [], (1, 1, 1), small_model.config, None)
    for label, feed in verification_windows(samples).labelled():
        ratio = quantize.tolerance_ratio(_logits(tmp_path / built.model_file, feed["eeg"], "f32"),
                                         _logits(fp32 / "model.xml", feed["eeg"], "f32"))
        assert ratio <= quantize.VALIDATION_MARGIN + 1e-3, label


def test_layers_that_put_a_validation_window_out_of_margin_go_back_to_fp32(small_exports, small_model, tmp_path):
    """Calibrated on windows 100x quieter than those validated: the ranges clip, NNCF must give back fp32
    until every validation window is within the margin, or refuse the engine."""
    export = small_exports["plugin"]
    stages = json.loads(export.stages.read_text())
    pinned = load_plan("int8-tcn").resolve(export.model, stages)
    samples = small_model.config.window_samples
    ir = CompiledModel(_fp32_ir(export, small_model, tmp_path), extensions=openvino_extensions("plugin")).read()
    free = set(_all_nodes(export.model)) - set(pinned)
    candidates = list(layer_nodes([op.get_friendly_name() for op in ir.get_ordered_ops()], export.model, free))
    loud = _windows(3, samples, 30.0, 1)
    try:
        quantized, settings = quantize.quantize_ir(ir, candidates, _windows(4, samples, 0.3, 0), loud)
    except EngineBuildError as refusal:
        assert "no int8 engine within" in str(refusal)
        return
    assert settings["fp32_restored_layers"], "clipped ranges kept every layer in int8"
    compiled = compile_model(ov.Core(), quantized, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    reference = compile_model(ov.Core(), ir, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    for window in loud:
        ratio = quantize.tolerance_ratio(compiled({"eeg": window})[compiled.output(OUTPUT_NAME)],
                                         reference({"eeg": window})[reference.output(OUTPUT_NAME)])
        assert ratio <= quantize.VALIDATION_MARGIN + 1e-3


def _fp32_ir(export, small_model, tmp_path):
    BACKENDS["openvino"].build(export.model, "plugin", tmp_path / "fp32", "fp32", [], (1, 1, 1), small_model.config,
                               None)
    return tmp_path / "fp32" / "model.xml"


def test_a_margin_no_quantized_layer_meets_refuses_the_engine(small_exports, small_model, tmp_path, monkeypatch):
    export = small_exports["plugin"]
    pinned = load_plan("int8-tcn").resolve(export.model, json.loads(export.stages.read_text()))
    monkeypatch.setattr(quantize, "VALIDATION_MARGIN", 1e-9)
    with pytest.raises(EngineBuildError, match="no int8 engine within"):
        BACKENDS["openvino"].build(export.model, "plugin", tmp_path, "int8", pinned, (1, 1, 1), small_model.config,
                                   Int8Calibration(_windows(2, small_model.config.window_samples, 1.0, 0)))


def test_without_nncf_an_int8_build_says_what_to_install(small_exports, small_model, tmp_path, monkeypatch):
    real_import = builtins.__import__

    def no_nncf(name, *args, **kwargs):
        if name == "nncf" or name.startswith("nncf."):
            raise ImportError("No module named 'nncf'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_nncf)
    with pytest.raises(DependencyUnavailable, match=r"pip install 'brr\[int8\]'"):
        BACKENDS["openvino"].build(small_exports["plugin"].model, "plugin", tmp_path, "int8", [], (1, 1, 1),
                                   small_model.config, Int8Calibration([]))
    assert not list(tmp_path.iterdir()), "the build wrote files before finding NNCF missing"


def test_the_tolerance_ratio_is_one_at_the_edge_of_the_tolerance():
    reference = np.array([0.0, 2.0])
    atol, rtol = 0.5, 0.1
    assert quantize.tolerance_ratio(reference + [atol, 0.0], reference) == pytest.approx(1.0)
    assert quantize.tolerance_ratio(reference + [0.0, atol + rtol * 2.0], reference) == pytest.approx(1.0)
    assert quantize.tolerance_ratio(reference, reference) == 0.0


@pytest.mark.parametrize("plan, unquantized_hint", [("int8-tcn", "f32"), ("int8-tcn-bf16", "bf16")])
def test_an_int8_split_quantizes_the_front_where_the_whole_engine_kept_int8(small_model, tmp_path, monkeypatch, plan,
                                                                           unquantized_hint):
    """brr-export --split of an OpenVINO int8 engine: the front quantized on the layers the whole engine kept
    int8 (those it gave back stay fp32), the rest as the whole engine's unquantized layers (fp32, or bf16 with
    the bf16 plan's islands pinned), the pair verified composed."""
    from brr.diff.composed import verify_split
    from brr.diff.inputs import verification_windows
    from brr.export import run as export_run
    from brr.model import save_checkpoint

    samples = small_model.config.window_samples
    # Random weights: calibrated on the verification windows too, or no layer stays int8 (see above).
    windows = _windows(4, samples, 1.0, 0) + [feed["eeg"] for feed in verification_windows(samples)]
    monkeypatch.setattr(export_run, "calibration_windows", lambda source, n_samples, count: iter(windows))
    checkpoint = save_checkpoint(small_model, tmp_path / "ckpt")
    result = export_run.export_artifacts(export_run.ExportRequest(
        checkpoint, tmp_path / "export", engine="int8", backend="openvino", ops="plugin",
        precision_plan=plan, split=True))
    manifest = json.loads((result.engine_dir / "manifest.json").read_text())
    whole, parts = manifest["settings"], manifest["split"]["parts"]
    front, rest = parts["front"]["settings"], parts["rest"]["settings"]
    assert whole["inference_precision"] == rest["inference_precision"] == unquantized_hint
    assert "int8_layers" not in rest
    if unquantized_hint == "bf16":
        # The rest ran in bf16 where the CPU has it, and the bf16 plan's islands (the Mamba norms, the cosine
        # similarity, the Laplacian PE) in fp32, in the whole engine and in the rest alike.
        for settings in (whole, rest):
            applied = settings["plan_applied"]
            assert applied["pinned_layers"] > 0 and applied["hint"] == "bf16"
            assert applied["reduced_precision_nodes"] > 0 or not applied["cpu_has_it"]
        assert parts["rest"]["fp32_pinned_nodes"]
    assert front["int8_layers"] and len(front["int8_layers"]) == len(whole["int8_layers"])
    front_graph = result.reference_dir / GraphPart.FRONT.file
    quantized = _fake_quantized_nodes(result.engine_dir / "front.xml", front_graph)
    assert len(quantized) == len(whole["int8_layers"])
    # The convolutions the whole engine gave back are pinned in the front, and not quantized there.
    assert len(whole["fp32_restored_nodes"]) <= len(parts["front"]["fp32_pinned_nodes"])
    assert not quantized & set(parts["front"]["fp32_pinned_nodes"])
    front_stages = node_stages(onnx.load(str(front_graph), load_external_data=False))
    assert {front_stages[n] for n in quantized} == {"tcn"}
    verification = verify_split(small_model, result.engine_dir, tmp_path / "verification", samples,
                                synthetic_windows=1)
    assert verification.passed, verification.summary()
