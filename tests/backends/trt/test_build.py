"""brr-export's TensorRT path without TensorRT: the CLI's exit code and the builder's pure logic.

The one build configuration (``TensorRTBuild``: flags, constraints, profile, calibrator, timing
cache; ``edit_network``: the plan's pins and the debug marks) is checked on Polygraphy's own
``CreateConfig`` (which builds nothing until called) and on a stand-in for TensorRT's network that
records what is done to it.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from fake_tensorrt import FP32, INT64, FakeLayer, FakeNetwork
from polygraphy.backend.trt import CreateConfig

from brr.calibration.int8 import build_tensorrt_int8
from brr.cli.export import main
from brr.errors import EXIT_UNUSABLE
from brr.backends import EngineBuildError
from brr.backends.trt.debug import TensorRTDebugStatistics
from brr.backends.trt.loader import (
    CALIBRATION_CACHE_FILE,
    TIMING_CACHE_FILE,
    NetworkEdits,
    TensorRTBuild,
    TensorRTRebuild,
    TensorRTUnavailable,
    config_flags,
    edit_network,
    engine_loader,
    import_tensorrt,
    layer_nodes,
    parse_batch_range,
    profile_shapes,
    unfused_debug_supported,
)
from brr.artifact.manifest import write_manifest
from brr.model import build_detector, resolve_config, save_checkpoint


def _tensorrt_usable() -> bool:
    try:
        import_tensorrt()
    except TensorRTUnavailable:
        return False
    return True


@pytest.mark.skipif(_tensorrt_usable(), reason="TensorRT and a GPU are present: the missing-TensorRT path cannot run")
def test_cli_without_tensorrt_exits_2_with_one_line(tmp_path, capsys):
    save_checkpoint(build_detector("v3-small"), tmp_path / "ckpt")
    assert main([str(tmp_path / "ckpt"), "--out", str(tmp_path / "out"), "--backend", "tensorrt"]) == EXIT_UNUSABLE
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "TensorRT" in err[0] and "pip install .[gpu]" in err[0]
    assert not (tmp_path / "out").exists()  # refused before any work


def test_batch_range_parsing():
    assert parse_batch_range("1:4:8") == (1, 4, 8)
    assert parse_batch_range("2") == (2, 2, 2)
    for bad in ("8:4:1", "0:1:2", "1:2", "a:b:c"):
        with pytest.raises(ValueError, match="MIN:OPT:MAX"):
            parse_batch_range(bad)


def test_profile_shapes():
    assert profile_shapes((1, 4, 8), 19, 15360) == {"eeg": ((1, 19, 15360), (4, 19, 15360), (8, 19, 15360))}


def test_config_flags():
    assert config_flags("fp32", pinned=False) == {}
    assert config_flags("fp16", pinned=True) == {"fp16": True, "precision_constraints": "obey"}
    assert config_flags("bf16", pinned=False) == {"bf16": True}
    assert config_flags("int8", pinned=False) == {"int8": True, "fp16": True}
    with pytest.raises(EngineBuildError):
        config_flags("fp8", pinned=False)


def test_layers_are_mapped_to_onnx_nodes_by_name_and_metadata():
    assert layer_nodes("node_Exp_3", "") == {"node_Exp_3"}
    assert layer_nodes("ForeignNode[a...b]", "[ONNX Layer: node_Softplus_1]\x1e[ONNX Layer: node_Exp_30]") == {
        "ForeignNode[a...b]", "node_Softplus_1", "node_Exp_30"}
    assert layer_nodes("other", None) == {"other"}


def network() -> FakeNetwork:
    return FakeNetwork([
        FakeLayer("node_Pow_3", [("pow", FP32)], "[ONNX Layer: node_Pow_3]"),
        FakeLayer("node_ReduceSum_4", [("sum", FP32)], "[ONNX Layer: node_ReduceSum_4]"),
        FakeLayer("(Unnamed Layer* 5) [Unary]", [("norm", FP32)], "[ONNX Layer: node_Sqrt_5]"),
        FakeLayer("node_Shape_6", [("shape", INT64)], "[ONNX Layer: node_Shape_6]"),
        FakeLayer("node_Div_7", [("cosine", FP32)], "[ONNX Layer: node_Div_7]"),
    ])


@pytest.mark.parametrize("precision", ["fp32", "fp16", "bf16", "int8"])
def test_build_configuration_for_each_precision(precision, tmp_path):
    calibrator = object() if precision == "int8" else None  # Polygraphy's Calibrator needs TensorRT to exist
    plain = TensorRTBuild(precision, (1, 4, 8), 19, 1920)
    pinned = TensorRTBuild(precision, (1, 4, 8), 19, 1920, ("node_Pow_3",))
    for build in (plain, pinned):
        arguments = build.config_arguments(calibrator, timing_cache=tmp_path / TIMING_CACHE_FILE)
        config = CreateConfig(**arguments)  # Polygraphy accepts every argument; nothing is built yet
        assert (config.fp16, config.bf16, config.int8) == (precision in ("fp16", "int8"), precision == "bf16",
                                                            precision == "int8")
        assert config.precision_constraints == ("obey" if build.fp32_nodes else None)
        assert config.calibrator is calibrator
        assert config.timing_cache_path == str(tmp_path / TIMING_CACHE_FILE)
        (profile,) = config.profiles
        shapes = profile["eeg"]
        assert (shapes.min, shapes.opt, shapes.max) == ((1, 19, 1920), (4, 19, 1920), (8, 19, 1920))
    assert "load_timing_cache" not in plain.config_arguments(calibrator)


def test_int8_needs_a_calibrator_and_only_int8_takes_one():
    with pytest.raises(EngineBuildError, match="calibrator"):
        TensorRTBuild("int8", (1, 1, 1), 19, 1920).config_arguments()
    with pytest.raises(EngineBuildError, match="calibrator"):
        TensorRTBuild("fp16", (1, 1, 1), 19, 1920).config_arguments(calibrator=object())
    with pytest.raises(EngineBuildError, match="precision"):
        TensorRTBuild("fp8", (1, 1, 1), 19, 1920)


def test_build_is_read_back_from_the_manifest(tmp_path):
    """The diff rebuilds with what the export recorded: precision, batch profile, window, the plan's pins."""
    config = resolve_config("v3-small")
    (tmp_path / "model.engine").write_bytes(b"engine")
    manifest = write_manifest(tmp_path, source={}, config=config, backend="tensorrt", precision="fp16", ops="plugin",
                              opset=18, model_file="model.engine", pinned_nodes=["node_Pow_3", "node_Div_7"],
                              batch=(1, 4, 8))
    assert TensorRTBuild.from_manifest(manifest) == TensorRTBuild(
        "fp16", (1, 4, 8), config.n_channels, config.window_samples, ("node_Pow_3", "node_Div_7"))


def test_plan_pins_layers_to_fp32_where_they_compute_and_store():
    net, edits = network(), NetworkEdits()
    build = TensorRTBuild("fp16", (1, 1, 1), 19, 1920, ("node_Sqrt_5", "node_Shape_6", "node_Constant_1"))
    edit_network(net, build, FP32, edits)
    unary, shape = net.layers[2], net.layers[3]
    # A layer the parser made of a pinned node (named by its metadata) is pinned; so is a shape layer,
    # whose int output keeps its type.
    assert edits.fp32_layers == [unary.name, shape.name]
    assert (unary.precision, unary.output_types) == (FP32, {0: FP32})
    assert (shape.precision, shape.output_types) == (FP32, {})
    assert all(layer.precision is None and not layer.output_types for layer in net.layers if layer not in (unary, shape))
    assert edits.fp32_nodes_without_layer == ["node_Constant_1"]  # folded by the parser: said, not hidden
    assert net.debug == [] and not net.unfused_marked and not edits.unfused_debug_tensors


def test_debug_marks_are_the_wanted_tensors_the_network_holds():
    net, edits = network(), NetworkEdits()
    build = TensorRTBuild("fp16", (1, 1, 1), 19, 1920)
    edit_network(net, build, FP32, edits, debug_tensors=["cosine", "pow", "folded", "pow"], unfused_debug=True)
    assert net.debug == ["pow", "cosine"] and edits.debug_tensors == ["pow", "cosine"]
    assert net.unfused_marked and edits.unfused_debug_tensors


def test_unfused_debug_tensors_need_tensorrt_10_12():
    assert unfused_debug_supported(FakeNetwork) is False  # TensorRT before 10.12 has no such method
    assert unfused_debug_supported(SimpleNamespace(mark_unfused_tensors_as_debug_tensors=lambda: True))


def test_rebuild_reuses_the_artifacts_caches(tmp_path):
    build = TensorRTBuild("int8", (1, 1, 1), 19, 1920)
    with pytest.raises(EngineBuildError, match=f"without its {CALIBRATION_CACHE_FILE}"):
        TensorRTRebuild(build, tmp_path)
    (tmp_path / CALIBRATION_CACHE_FILE).write_bytes(b"TRT-1008-EntropyCalibration2\neeg: 3c010a14\n")
    rebuild = TensorRTRebuild(build, tmp_path)
    assert rebuild.calibration_cache == tmp_path / CALIBRATION_CACHE_FILE and rebuild.timing_cache is None
    (tmp_path / TIMING_CACHE_FILE).write_bytes(b"timings")
    assert TensorRTRebuild(build, tmp_path).timing_cache == tmp_path / TIMING_CACHE_FILE
    fp16 = TensorRTRebuild(TensorRTBuild("fp16", (1, 1, 1), 19, 1920), tmp_path)
    assert fp16.calibration_cache is None  # a cache beside a non-int8 engine is not used


@pytest.mark.skipif(_tensorrt_usable(), reason="TensorRT and a GPU are present: the missing-TensorRT path cannot run")
def test_builds_without_tensorrt_say_what_to_install(tmp_path):
    build = TensorRTBuild("fp16", (1, 1, 1), 19, 1920)
    with pytest.raises(TensorRTUnavailable, match=r"pip install \.\[gpu\]"):
        engine_loader(build, tmp_path / "model.onnx")
    with pytest.raises(TensorRTUnavailable, match=r"pip install \.\[gpu\]"):
        TensorRTRebuild(build, tmp_path).runner_for(None, "marked")
    with pytest.raises(TensorRTUnavailable, match=r"pip install \.\[gpu\]"):
        TensorRTDebugStatistics(None, TensorRTRebuild(build, tmp_path))(["tensor"], {})
    with pytest.raises(TensorRTUnavailable, match=r"pip install \.\[gpu\]"):
        build_tensorrt_int8(tmp_path / "model.onnx", SimpleNamespace(shape=(1, 19, 1920)), tmp_path / "int8")
    assert not (tmp_path / "int8").exists()  # refused before any work
