"""TensorRT debug-tensor localisation without TensorRT: the listener's reduction, what it keeps, how the
localiser uses an engine that fuses tensors away, and how the diff wires a TensorRT artifact.

The listener's path is run on host buffers (TensorRT's ``TensorLocation.HOST``), through the same
code as device buffers but for the stream. The engine that fuses is ONNX's reference evaluator on an
fp16 graph, reading its tensors the way ``TensorRTDebugStatistics`` does: as built, the tensors
fused into one kernel are not observable; materialised, every tensor asked for is.
"""

from __future__ import annotations

import ctypes
import json
import math

import numpy as np
import onnx
import pytest
import torch
from fake_tensorrt import FAKE_TENSORRT, FakeLayer, FakeNetwork
from onnx import TensorProto, helper
from planted_nets import WINDOW, CosineNet, export_pair
from polygraphy.backend.trt import TrtRunner

from brr.artifact.manifest import write_manifest
from brr.backends.onnx_reference import OnnxReferenceRunner
from brr.backends.onnxrt.runner import lean_onnxruntime_runner, onnxruntime_runner
from brr.backends.trt.debug import (
    CudaBuffer,
    DebugTensorCopies,
    DebugTensorRanges,
    TensorRTDebugStatistics,
    buffer_address,
    debug_listener,
    debug_tensor_view,
    output_ranges,
)
from brr.backends.trt.loader import NETWORK_FILE, TIMING_CACHE_FILE, NetworkEdits, TensorRTBuild, edit_network
from brr.backends.trt.runner import TensorRTEngineRunner
from brr.diff import SyntheticWindows, run_diff, validate
from brr.diff.engines import Engine, artifact_engine
from brr.diff.localise import NodeLocaliser
from brr.model import resolve_config
from brr.onnx.statistics import ObservedRanges, TensorRange, instrument, read_ranges, tensor_range


def host_pointer(array: np.ndarray) -> int:
    return array.ctypes.data


# ---------------------------------------------------------------------------------------------- reduction
def instrumented_range(values: np.ndarray) -> TensorRange:
    """The range ONNX Runtime computes in-graph (``instrument``) for ``values`` made by a node."""
    elem = helper.np_dtype_to_tensor_dtype(values.dtype)
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"], name="copy")], "g",
                              [helper.make_tensor_value_info("x", elem, values.shape)],
                              [helper.make_tensor_value_info("y", elem, values.shape)])
    model = instrument(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), ["y"])
    with onnxruntime_runner(model, "instrumented", lean=True) as runner:
        return read_ranges(runner.infer({"x": values}), ["y"])["y"]


@pytest.mark.parametrize("values", [
    np.linspace(-3, 5, 600, dtype=np.float32).reshape(2, 300),
    np.array([[1.0, 6.0e4, -6.5e4]], dtype=np.float16),  # squares beyond fp16: fp32 accumulation keeps them
    np.array([[1.0, np.inf, 2.0]], dtype=np.float16),
    np.array([[np.nan, 1.0]], dtype=np.float32),
])
def test_listener_reduction_is_the_instrumented_graphs(values):
    """A debug tensor's range compares with the fp32 graph's, which ONNX Runtime reduces in-graph."""
    ours, theirs = tensor_range(torch.from_numpy(values)), instrumented_range(values)
    assert ours.finite == theirs.finite and ours.size == theirs.size == values.size
    if ours.finite:
        assert math.isclose(ours.sum_squares, theirs.sum_squares, rel_tol=1e-6)
        assert (ours.max, ours.min) == (theirs.max, theirs.min)


def test_bfloat16_and_empty_tensors_reduce():
    values = torch.tensor([[1.5, -2.0], [3.0e38, 0.0]], dtype=torch.bfloat16)
    found = tensor_range(values)
    assert not found.finite and found.size == 4  # the square of 3e38 overflows fp32: the range says so
    assert tensor_range(torch.zeros((0, 3), dtype=torch.float16)) == TensorRange(0.0, 0.0, 0.0, 0)


# ---------------------------------------------------------------------------------------------- buffers
@pytest.mark.parametrize(("dtype", "type_name"), [(np.float32, "FLOAT"), (np.float16, "HALF")])
def test_host_debug_tensor_is_viewed_in_place(dtype, type_name):
    array = np.arange(24, dtype=dtype).reshape(2, 3, 4)
    view = debug_tensor_view(host_pointer(array), type_name, (2, 3, 4), on_device=False)
    assert view.shape == (2, 3, 4) and np.array_equal(view.numpy(), array)
    array[1, 2, 3] = -7  # no copy: the view reads TensorRT's buffer itself, while the callback holds it
    assert view[1, 2, 3].item() == -7


def test_bfloat16_debug_tensor_is_read_through_its_bytes():
    source = torch.tensor([[0.5, -1.25, 1.0e30]], dtype=torch.bfloat16)
    view = debug_tensor_view(source.data_ptr(), "BF16", (1, 3), on_device=False)
    assert view.dtype == torch.bfloat16 and torch.equal(view, source)


def test_non_float_debug_tensors_give_no_range():
    array = np.arange(6, dtype=np.int8)
    for type_name in ("INT8", "FP8", "INT32", "INT64", "BOOL"):
        assert debug_tensor_view(host_pointer(array), type_name, (6,), on_device=False) is None
    assert debug_tensor_view(0, "HALF", (0, 4), on_device=False).shape == (0, 4)


def test_device_buffers_are_described_as_bytes():
    interface = CudaBuffer(0x7F0000001000, 96).__cuda_array_interface__
    assert interface == {"shape": (96,), "typestr": "|u1", "data": (0x7F0000001000, False), "version": 2}


def test_buffer_address_from_int_or_capsule():
    array = np.zeros(4, dtype=np.float32)
    new_capsule = ctypes.pythonapi.PyCapsule_New
    new_capsule.restype, new_capsule.argtypes = ctypes.py_object, [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p]
    assert buffer_address(host_pointer(array)) == host_pointer(array)
    assert buffer_address(new_capsule(host_pointer(array), None, None)) == host_pointer(array)
    assert buffer_address(new_capsule(host_pointer(array), b"debug_tensor", None)) == host_pointer(array)


# ---------------------------------------------------------------------------------------------- listener
class FakeTensorRT:
    """What the listener uses of the tensorrt module."""

    class IDebugListener:
        def __init__(self):
            pass

    class TensorLocation:
        DEVICE, HOST = "DEVICE", "HOST"


class DataType:
    def __init__(self, name: str):
        self.name = name


def test_listener_keeps_only_the_ranges_of_wanted_tensors():
    collector = DebugTensorRanges(["/edge/Pow_output_0", "/edge/Sqrt_output_0", "/tcn/quant"])
    listener = debug_listener(FakeTensorRT, collector)
    assert isinstance(listener, FakeTensorRT.IDebugListener)
    power = np.array([[1.6e5, 4.0]], dtype=np.float32).astype(np.float16)  # inf in fp16
    other = np.ones((8, 8), dtype=np.float32)
    quantised = np.arange(4, dtype=np.int8)
    for name, array, type_name in [("/edge/Pow_output_0", power, "HALF"), ("Reformatted Input Tensor 0", other, "FLOAT"),
                                   ("/tcn/quant", quantised, "INT8")]:
        assert listener.process_debug_tensor(host_pointer(array), "HOST", DataType(type_name), array.shape, name, 0)
    assert set(collector.ranges) == {"/edge/Pow_output_0"}  # not wanted: dropped; int8: no range
    found = collector.ranges["/edge/Pow_output_0"]
    assert not found.finite and found.size == 2 and found.min == 4.0
    assert all(isinstance(v, (int, float)) for v in vars(found).values())  # scalars only, no tensor kept
    collector.check()


def test_listener_errors_surface_after_the_run():
    """TensorRT prints and swallows what a listener raises; the collector raises it after the run."""
    collector = DebugTensorRanges(["x"])
    debug_listener(FakeTensorRT, collector).process_debug_tensor("not an address", "HOST", DataType("FLOAT"),
                                                                 (2,), "x", 0)
    with pytest.raises(RuntimeError, match="1 TensorRT debug tensor.*x: "):
        collector.check()


def test_copies_are_the_wanted_tensors_kept_apart_from_the_engine_buffer():
    copies = DebugTensorCopies(["tcn", "gates"])
    listener = debug_listener(FakeTensorRT, copies)
    tcn = np.arange(6, dtype=np.float32).reshape(2, 3)
    gates = torch.tensor([[0.5, -1.25]], dtype=torch.bfloat16)
    listener.process_debug_tensor(host_pointer(tcn), "HOST", DataType("FLOAT"), tcn.shape, "tcn", 0)
    listener.process_debug_tensor(gates.data_ptr(), "HOST", DataType("BF16"), (1, 2), "gates", 0)
    listener.process_debug_tensor(host_pointer(tcn), "HOST", DataType("FLOAT"), tcn.shape, "unwanted", 0)
    tcn[0, 0] = 99.0  # TensorRT reuses its buffer after the callback: the copy keeps what the run wrote
    assert set(copies.arrays) == {"tcn", "gates"} and copies.arrays["tcn"][0, 0] == 0.0
    assert copies.arrays["gates"].dtype == np.float32 and copies.arrays["gates"].tolist() == [[0.5, -1.25]]
    copies.check()
    quantised = np.arange(4, dtype=np.int8)
    listener.process_debug_tensor(host_pointer(quantised), "HOST", DataType("INT8"), (4,), "tcn", 0)
    with pytest.raises(RuntimeError, match="tcn: a INT8 debug tensor has no values to copy"):
        copies.check()
    copies.clear()
    assert copies.arrays == {} and copies.errors == []


def served_engine(monkeypatch, outputs: dict, debug: dict) -> None:
    """Polygraphy's TrtRunner.infer_impl of an engine with ``outputs``, writing ``debug`` tensors as it runs
    (none for a serving runner, which activation leaves with every debug tensor off)."""

    def infer_impl(self, feed_dict, *args, **kwargs):
        for name, array in debug.items() if self.debug_listener is not None else ():
            self.debug_listener.process_debug_tensor(host_pointer(array), "HOST", DataType("FLOAT"), array.shape,
                                                     name, 0)
        return dict(outputs)

    monkeypatch.setattr("brr.backends.trt.runner.import_tensorrt", lambda: FakeTensorRT)
    monkeypatch.setattr(TrtRunner, "infer_impl", infer_impl)


def test_served_engine_gives_its_probes_from_debug_tensors(monkeypatch):
    """A serving engine's only output is the logits; the diff's runner reads its probes as debug tensors (and
    an older engine's probe that is an output from its outputs)."""
    logits, tcn = np.zeros((1, 4), np.float32), np.ones((1, 3), np.float32)
    served_engine(monkeypatch, {"logits": logits, "decoder": np.full(2, 2.0, np.float32)}, {"tcn": tcn})
    diffed, served, missing = (TensorRTEngineRunner(None, name=name, probes=probes) for name, probes in (
        ("diffed", ["tcn", "decoder"]), ("served", []), ("missing", ["tcn", "gnn"])))
    for runner in (diffed, served, missing):
        runner.is_active = True  # activation deserialises an engine: the fake infer_impl stands for it
    found = diffed.infer({"eeg": None}, check_inputs=False)
    assert list(found) == ["logits", "tcn", "decoder"] and found["tcn"].tolist() == [[1.0, 1.0, 1.0]]
    assert served.debug_listener is None and list(served.infer({"eeg": None}, check_inputs=False)) == ["logits"]
    with pytest.raises(RuntimeError, match=r"no \['gnn'\], neither as outputs nor as debug tensors"):
        missing.infer({"eeg": None}, check_inputs=False)


def test_engine_outputs_complete_the_ranges():
    reported = {"a": TensorRange(1.0, 1.0, 1.0, 1)}
    outputs = {"probe": np.array([[3.0, -4.0]], dtype=np.float32), "logits": np.zeros((1, 2), np.float32)}
    completed = output_ranges(["a", "probe", "fused"], reported, outputs)
    assert set(completed) == {"a", "probe"} and completed["probe"] == TensorRange(25.0, 3.0, -4.0, 2)


# ---------------------------------------------------------------------------------------------- marking
@pytest.fixture(scope="module")
def cosine():
    """The planted fp16 overflow (a cosine norm's squares beyond 65504): (fp32 graph, fp16 graph)."""
    return export_pair(CosineNet(400.0))


def parsed(model: onnx.ModelProto) -> FakeNetwork:
    """The network TensorRT's ONNX parser makes of ``model``, as edit_network sees it: one layer per node
    (constants folded away), named after the node, outputs named after the node's outputs."""
    floats = {v.name for v in onnx.shape_inference.infer_shapes(model).graph.value_info
              if v.type.tensor_type.elem_type == TensorProto.FLOAT} | {o.name for o in model.graph.output}
    return FakeNetwork([FakeLayer(n.name, [(o, "FLOAT" if o in floats else "INT64") for o in n.output],
                                  f"[ONNX Layer: {n.name}]") for n in model.graph.node if n.op_type != "Constant"],
                       outputs=[o.name for o in model.graph.output])


def test_debug_marks_follow_the_compared_tensors(cosine):
    """The tensors node level asks for are the fp32 graph's float node outputs; each is marked once."""
    fp32, _ = cosine
    engine = Engine("tensorrt-fp16", None, "fp16", fp32, fp32, lambda model, name: None)
    wanted = [t.name for t in NodeLocaliser(engine, lean_onnxruntime_runner).tensors]
    assert {"pow_1", "sum_1", "sqrt", "div", "logits"} <= set(wanted) and "eeg" not in wanted
    net, edits = parsed(fp32), NetworkEdits()
    edit_network(net, FAKE_TENSORRT, edits, serving=True, debug_tensors=wanted)
    held = {o.name for layer in net.layers for o in layer.outputs}
    assert net.debug == [name for name in wanted if name in held] == edits.debug_tensors
    assert len(set(net.debug)) == len(net.debug)


# ---------------------------------------------------------------------------------------------- localiser
class FusingReference:
    """An fp16 engine that fuses ``fused`` into the kernel after them, read as TensorRTDebugStatistics reads
    TensorRT: ONNX's reference evaluator (true fp16 rounding) with the tensors reduced in-graph."""

    def __init__(self, fp16: onnx.ModelProto, fused: set[str]):
        self.fp16, self.fused, self.calls = fp16, fused, []

    def __call__(self, names: list[str], feed: dict, materialise: bool = False) -> ObservedRanges:
        self.calls.append((list(names), materialise))
        with OnnxReferenceRunner(instrument(self.fp16, names), "fusing-reference") as runner:
            outputs = dict(runner.infer(feed))
        ranges = read_ranges(outputs, names)
        if not materialise:
            ranges = {n: r for n, r in ranges.items() if n not in self.fused}
        plain = {k: v for k, v in outputs.items() if "::" not in k}
        return ObservedRanges(ranges, plain, "marked_debug_tensors" if materialise else "debug_tensors")


def fusing_engine(fp32, fp16, fused: set[str]) -> Engine:
    return Engine("tensorrt-fp16", OnnxReferenceRunner(fp16, "tensorrt-fp16"), "fp16", fp16, fp32,
                  OnnxReferenceRunner, tensor_statistics=FusingReference(fp16, fused))


def test_origin_fused_into_a_kernel_is_found_by_making_the_kernel_observable(cosine, tmp_path):
    fp32, fp16 = cosine
    # Pow -> Transpose -> ReduceSum -> Sqrt as one kernel, as TensorRT fuses a norm; Mul fused into the Div.
    fused = {"pow_1", "transpose", "sum_1", "mul_29"}
    engine = fusing_engine(fp32, fp16, fused)
    report = run_diff(onnxruntime_runner(fp32, "fp32-reference"), [engine], SyntheticWindows(1, WINDOW), 1e-2, 1e-2,
                      report_dir=tmp_path)
    level = report.engines[0].inputs[0].node_level
    # As built, the first non-finite tensor seen is the fused kernel's output (sqrt); inside it, Pow overflows.
    first = level.first_nonfinite
    assert (first.op_type, first.tensor, first.stage) == ("Pow", "pow_1", "edge_similarity")
    assert first.fused_with == ["pow_1", "transpose", "sum_1"] and first.cause == "overflow"
    assert level.observed_by == ["debug_tensors", "marked_debug_tensors", "marked_outputs"]
    assert sorted(level.unobserved) == sorted(fused) and level.reproduced is True
    # Only the kernel was made observable, and only once; the rest was read from the engine as built.
    calls = engine.tensor_statistics.calls
    assert [m for _, m in calls] == [False, True] and calls[1][0] == ["pow_1", "transpose", "sum_1", "sqrt"]
    # Mul (fused, not observed) took a non-finite input: it is not named as what hid it.
    assert all(h.node != "node_mul_29" for h in first.hidden_by)
    document = json.loads((tmp_path / "report.json").read_text())
    validate(document)
    assert document["engines"][0]["inputs"][0]["node_level"]["observed_by"][0] == "debug_tensors"
    markdown = (tmp_path / "report.md").read_text()
    assert "TensorRT debug tensors of the engine as built" in markdown and "4 compared tensors" in markdown


def test_fully_observed_engine_needs_no_second_read(cosine):
    fp32, fp16 = cosine
    engine = fusing_engine(fp32, fp16, set())
    level = run_diff(onnxruntime_runner(fp32, "fp32-reference"), [engine], SyntheticWindows(1, WINDOW), 1e-2,
                     1e-2).engines[0].inputs[0].node_level
    assert level.first_nonfinite.op_type == "Pow" and level.first_nonfinite.fused_with is None
    assert level.observed_by == ["debug_tensors", "marked_outputs"] and level.unobserved == []
    assert [m for _, m in engine.tensor_statistics.calls] == [False]


# ---------------------------------------------------------------------------------------------- wiring
def tensorrt_artifact(directory, precision: str, pins: list[str], files: dict[str, bytes]) -> dict:
    """A TensorRT artifact holding ``files`` beside its engine (its typed graph, its timing cache)."""
    directory.mkdir()
    for name, content in {"model.engine": b"engine", **files}.items():
        (directory / name).write_bytes(content)
    return write_manifest(directory, source={}, config=resolve_config("v3-small"), backend="tensorrt",
                          precision=precision, ops="plugin", opset=18, model_file="model.engine",
                          pinned_nodes=pins, batch=(1, 2, 4))


def test_diff_reads_a_tensorrt_artifact_by_debug_tensors_with_its_own_build(cosine, tmp_path):
    """The rebuilds parse the artifact's typed graph (what its engine was built from) as it was built."""
    fp32, fp16 = cosine
    path = tmp_path / "tensorrt-fp16-plugin"
    manifest = tensorrt_artifact(path, "fp16", ["node_pow_1", "node_sqrt"],
                                 {NETWORK_FILE: fp16.SerializeToString(), TIMING_CACHE_FILE: b"timings"})
    engine = artifact_engine(path, manifest, "served-runner", fp32, None)
    assert engine.localisable and engine.node_level_note is None and engine.runner == "served-runner"
    assert engine.onnx_model == fp16 and engine.fp32_model is fp32
    statistics = engine.tensor_statistics
    assert isinstance(statistics, TensorRTDebugStatistics) and statistics.model == fp16
    rebuild = statistics.rebuild
    assert engine.runner_for == rebuild.runner_for  # marked copies: the same settings as the debug engine
    config = resolve_config("v3-small")
    assert rebuild.build == TensorRTBuild("fp16", (1, 2, 4), config.n_channels, config.window_samples,
                                          ("node_pow_1", "node_sqrt"))
    assert rebuild.timing_cache == path / TIMING_CACHE_FILE and rebuild.network == path / NETWORK_FILE


def test_diff_says_why_a_tensorrt_artifact_is_not_localised(cosine, tmp_path):
    fp32, fp16 = cosine
    typed = {NETWORK_FILE: fp16.SerializeToString()}
    uncached = tmp_path / "uncached"
    engine = artifact_engine(uncached, tensorrt_artifact(uncached, "fp16", [], typed), None, fp32, None)
    assert engine.localisable and "no timing.cache" in engine.node_level_note
    weak = tmp_path / "weak"  # an engine of an older brr-export: weakly typed, no typed graph beside it
    engine = artifact_engine(weak, tensorrt_artifact(weak, "int8", [], {TIMING_CACHE_FILE: b"t"}), None, fp32, None)
    assert not engine.localisable and "weakly typed by an older brr-export" in engine.node_level_note
    alone = tmp_path / "alone"
    engine = artifact_engine(alone, tensorrt_artifact(alone, "fp16", [], typed), None, None,
                                      "its manifest names no fp32 ONNX it was built from")
    assert not engine.localisable and engine.node_level_note.endswith("names no fp32 ONNX it was built from")


class RecordingRebuild:
    """TensorRTRebuild's interface, recording each build; ``unfused`` is what mark_unfused_... returns."""

    def __init__(self, unfused: bool = True):
        self.unfused, self.builds = unfused, []

    def engine_bytes(self, model, debug_tensors=(), unfused_debug=False):
        self.builds.append((tuple(debug_tensors), unfused_debug))
        edits = NetworkEdits(debug_tensors=list(debug_tensors), unfused_debug_tensors=unfused_debug and self.unfused)
        return f"engine-{len(self.builds)}".encode(), edits


def reading(monkeypatch) -> list:
    """TensorRT as ``TensorRTDebugStatistics`` sees it; returns the runs."""
    runs = []

    def run(trt, engine, feed, names, unfused):
        runs.append((engine, unfused))
        return {name: TensorRange(1.0, 1.0, 1.0, 1) for name in list(names)[:1]}, {"probe": np.ones(2, np.float32)}

    monkeypatch.setattr("brr.backends.trt.debug.import_tensorrt", lambda: FAKE_TENSORRT)
    monkeypatch.setattr("brr.backends.trt.debug.run_with_listener", run)
    return runs


def test_engine_as_built_is_built_once_and_materialising_marks_the_names(monkeypatch):
    runs, rebuild = reading(monkeypatch), RecordingRebuild()
    statistics = TensorRTDebugStatistics("fp32 graph", rebuild)
    first = statistics(["a", "b", "probe"], {})
    second = statistics(["a", "b", "probe"], {})
    assert (first.method, second.method) == ("debug_tensors", "debug_tensors")
    assert rebuild.builds == [((), True)] and runs == [(b"engine-1", True)] * 2  # one build, run per input
    assert set(first.ranges) == {"a", "probe"}  # b not reported (fused); the probe read from the outputs
    kernel = statistics(["b", "c"], {}, materialise=True)
    assert kernel.method == "marked_debug_tensors" and rebuild.builds[-1] == (("b", "c"), False)
    assert runs[-1] == (b"engine-2", False)


def test_where_unfused_tensors_cannot_be_marked_every_name_is_marked(monkeypatch):
    """A network whose unfused tensors TensorRT does not mark: mark_debug each name."""
    runs, rebuild = reading(monkeypatch), RecordingRebuild(unfused=False)
    statistics = TensorRTDebugStatistics("fp32 graph", rebuild)
    for _ in range(2):
        assert statistics(["a", "b"], {}).method == "marked_debug_tensors"
    assert rebuild.builds == [((), True), (("a", "b"), False)]  # tried once; built once for these names
    assert [unfused for _, unfused in runs] == [False, False]
    statistics(["c"], {})
    assert rebuild.builds[-1] == (("c",), False)
