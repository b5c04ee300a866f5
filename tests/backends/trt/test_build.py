"""TensorRT's build configuration without TensorRT: strongly typed, no precision in the builder.

The one build configuration (``TensorRTBuild.config_arguments``; ``network_flags``; ``edit_network``:
serving outputs, probe and debug marks, plugin implementations) is checked on Polygraphy's own
``CreateConfig`` (which builds nothing until called) and on stand-ins for TensorRT's module and network
that record what is done to them.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from fake_tensorrt import (
    FAKE_TENSORRT,
    FP32,
    INT64,
    FakeLayer,
    FakeNetwork,
    FakePlugin,
    FakePluginLayer,
    tensorrt_usable,
)
from polygraphy.backend.trt import CreateConfig

import brr
from brr.artifact.manifest import write_manifest
from brr.backends import EngineBuildError
from brr.backends.trt.debug import TensorRTDebugStatistics
from brr.backends.trt.loader import (
    NETWORK_FILE,
    TIMING_CACHE_FILE,
    NetworkEdits,
    TensorRTBuild,
    TensorRTRebuild,
    TensorRTUnavailable,
    edit_network,
    engine_loader,
    import_tensorrt,
    network_flags,
    parse_batch_range,
    profile_shapes,
    too_old,
    version_major,
)
from brr.calibration.int8 import build_tensorrt_int8
from brr.model import resolve_config


def test_batch_range_parsing():
    assert parse_batch_range("1:4:8") == (1, 4, 8)
    assert parse_batch_range("2") == (2, 2, 2)
    for bad in ("8:4:1", "0:1:2", "1:2", "a:b:c"):
        with pytest.raises(ValueError, match="MIN:OPT:MAX"):
            parse_batch_range(bad)


def test_profile_shapes():
    assert profile_shapes((1, 4, 8), 19, 15360) == {"eeg": ((1, 19, 15360), (4, 19, 15360), (8, 19, 15360))}


def test_networks_are_strongly_typed_and_prefer_aot_plugins():
    assert network_flags(FAKE_TENSORRT) == (1 << 5) | (1 << 6)
    older = SimpleNamespace(__version__="10.6.0", NetworkDefinitionCreationFlag=SimpleNamespace(STRONGLY_TYPED=5))
    with pytest.raises(TensorRTUnavailable, match="no NetworkDefinitionCreationFlag.PREFER_AOT_PYTHON_PLUGINS"):
        network_flags(older)


@pytest.mark.parametrize("precision", ["fp32", "fp16", "bf16", "int8"])
def test_build_configuration_has_no_precision_in_it(precision, tmp_path):
    """Whatever the precision, the builder gets the same configuration: the graph's types are the engine's."""
    build = TensorRTBuild(precision, (1, 4, 8), 19, 1920, ("node_Pow_3",))
    arguments = build.config_arguments("DETAILED", timing_cache=tmp_path / TIMING_CACHE_FILE)
    assert set(arguments) == {"profiles", "tf32", "profiling_verbosity", "load_timing_cache"}
    config = CreateConfig(**arguments)  # Polygraphy accepts every argument; nothing is built yet
    assert (config.fp16, config.bf16, config.int8, config.fp8) == (False, False, False, False)
    assert config.tf32 is False  # fp32 arithmetic in the graph stays fp32, not TF32's 10-bit mantissas
    assert config.precision_constraints is None and config.calibrator is None
    assert config.profiling_verbosity == "DETAILED"
    assert config.timing_cache_path == str(tmp_path / TIMING_CACHE_FILE)
    (profile,) = config.profiles
    shapes = profile["eeg"]
    assert (shapes.min, shapes.opt, shapes.max) == ((1, 19, 1920), (4, 19, 1920), (8, 19, 1920))
    assert "load_timing_cache" not in build.config_arguments("DETAILED")
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


def network(plugins: list[FakeLayer] = ()) -> FakeNetwork:
    """A parsed network: a cosine norm's layers, a shape layer, the logits, and two probes among the outputs."""
    return FakeNetwork([
        FakeLayer("node_Pow_3", [("pow", FP32)], "[ONNX Layer: node_Pow_3]"),
        FakeLayer("node_ReduceSum_4", [("sum", FP32)], "[ONNX Layer: node_ReduceSum_4]"),
        FakeLayer("(Unnamed Layer* 5) [Unary]", [("norm", FP32)], "[ONNX Layer: node_Sqrt_5]"),
        FakeLayer("node_Shape_6", [("shape", INT64)], "[ONNX Layer: node_Shape_6]"),
        FakeLayer("node_Div_7", [("edge_similarity", FP32)], "[ONNX Layer: node_Div_7]"),
        *plugins,
        FakeLayer("node_Gemm_9", [("logits", FP32)], "[ONNX Layer: node_Gemm_9]"),
    ], outputs=["logits", "norm", "edge_similarity"])


def test_serving_engine_has_the_logits_alone_and_its_probes_as_debug_tensors():
    net, edits = network(), NetworkEdits()
    edit_network(net, FAKE_TENSORRT, edits, serving=True)
    assert [t.name for t in net.outputs] == ["logits"]
    assert net.unmarked == edits.probes == ["norm", "edge_similarity"]
    assert net.debug == ["norm", "edge_similarity"]  # observable in the very engine served
    assert edits.debug_tensors == [] and not net.unfused_marked and edits.plugins == {}


def test_edited_copies_keep_their_outputs():
    """A diff's copy with tensors marked as outputs (``serving=False``) keeps every one of them."""
    net, edits = network(), NetworkEdits()
    edit_network(net, FAKE_TENSORRT, edits, serving=False)
    assert [t.name for t in net.outputs] == ["logits", "norm", "edge_similarity"]
    assert net.unmarked == net.debug == edits.probes == []


def test_a_graph_without_logits_is_refused():
    net = FakeNetwork([FakeLayer("node_Pow_3", [("pow", FP32)])], outputs=["pow"])
    with pytest.raises(EngineBuildError, match="no 'logits' output"):
        edit_network(net, FAKE_TENSORRT, NetworkEdits(), serving=True)


def test_debug_marks_are_the_wanted_tensors_the_network_holds():
    net, edits = network(), NetworkEdits()
    edit_network(net, FAKE_TENSORRT, edits, serving=True, debug_tensors=["sum", "pow", "folded", "pow", "norm"],
                 unfused_debug=True)
    # A probe is marked once, as a probe; a folded tensor is not there to mark.
    assert net.debug == ["norm", "edge_similarity", "pow", "sum"] and edits.debug_tensors == ["pow", "sum"]
    assert net.unfused_marked and edits.unfused_debug_tensors


def test_each_plugin_records_the_implementation_the_parser_created():
    scan = FakePluginLayer("scan_0", [("scan", FP32)], FakePlugin("brr::SelectiveScan", aot=True))
    eigh = FakePluginLayer("eigh_0", [("values", FP32), ("vectors", FP32)], FakePlugin("brr::SymmetricEigh", aot=False))
    again = FakePluginLayer("scan_1", [("scan_b", FP32)], FakePlugin("brr::SelectiveScan", aot=True))
    edits = NetworkEdits()
    edit_network(network([scan, eigh, again]), FAKE_TENSORRT, edits, serving=True)
    assert edits.plugins == {"brr::SelectiveScan": "aot", "brr::SymmetricEigh": "jit"}


def test_tensorrt_versions():
    assert too_old("10.11.0.33") and too_old("10.8.0")
    assert not too_old("10.12.0.36") and not too_old("11.4.0.106")
    assert (version_major("10.13.2"), version_major("11.4.0.106")) == (10, 11)


def test_an_older_tensorrt_is_refused_with_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", SimpleNamespace(__version__="10.8.0.43"))
    with pytest.raises(TensorRTUnavailable, match=r"TensorRT 10\.8\.0\.43 .* >= 10\.12.*pip install \.\[gpu\]"):
        import_tensorrt()


def test_rebuild_needs_the_typed_graph_and_reuses_the_timing_cache(tmp_path):
    build = TensorRTBuild("int8", (1, 1, 1), 19, 1920)
    with pytest.raises(EngineBuildError, match=f"no {NETWORK_FILE}: .*weakly typed"):
        TensorRTRebuild(build, tmp_path)
    (tmp_path / NETWORK_FILE).write_bytes(b"typed graph")
    rebuild = TensorRTRebuild(build, tmp_path)  # int8 too: its scales are in the graph, no calibration cache
    assert rebuild.network == tmp_path / NETWORK_FILE and rebuild.timing_cache is None
    (tmp_path / TIMING_CACHE_FILE).write_bytes(b"timings")
    assert TensorRTRebuild(build, tmp_path).timing_cache == tmp_path / TIMING_CACHE_FILE


@pytest.mark.skipif(tensorrt_usable(), reason="TensorRT and a GPU are present: the missing-TensorRT path cannot run")
def test_builds_without_tensorrt_say_what_to_install(tmp_path):
    build = TensorRTBuild("fp16", (1, 1, 1), 19, 1920)
    (tmp_path / NETWORK_FILE).write_bytes(b"typed graph")
    with pytest.raises(TensorRTUnavailable, match=r"pip install \.\[gpu\]"):
        engine_loader(build, tmp_path / NETWORK_FILE)
    with pytest.raises(TensorRTUnavailable, match=r"pip install \.\[gpu\]"):
        TensorRTRebuild(build, tmp_path).runner_for(None, "marked")
    with pytest.raises(TensorRTUnavailable, match=r"pip install \.\[gpu\]"):
        TensorRTDebugStatistics(None, TensorRTRebuild(build, tmp_path))(["tensor"], {})
    with pytest.raises(TensorRTUnavailable, match=r"pip install \.\[gpu\]"):
        build_tensorrt_int8(tmp_path / "model.onnx", (1, 19, 1920), tmp_path / "int8")
    assert not (tmp_path / "int8").exists()  # refused before any work


# Weak typing: TensorRT 11 removed all of it, and brr asks for precision in the graph only.
WEAK_TYPING = re.compile(r"strongly_typed\s*=\s*False|precision_constraints|BuilderFlag\.(FP16|BF16|INT8)|Calibrator"
                         r"|set_int8_calibrator|int8_calibrator|PRECISION_FLAGS")


def test_no_weak_typing_remains_in_the_package():
    package = Path(brr.__file__).parent
    found = [f"{path.relative_to(package)}:{number}: {line.strip()}"
             for path in sorted(package.rglob("*.py"))
             for number, line in enumerate(path.read_text().splitlines(), 1) if WEAK_TYPING.search(line)]
    assert len(list(package.rglob("*.py"))) > 50 and found == []
