"""Node level on OpenVINO engines (``brr.diff.openvino_nodes``): the fp32 graph's tensors that the OpenVINO model
keeps are read as extra outputs of it, and every marked run is held to the engine's own logits.

The engines are built by brr's OpenVINO build from a tiny net (``planted_nets.CosineNet``). The planted fault is
one OpenVINO keeps: it fuses a chain of elementwise ops into one kernel that computes in f32 even under a bf16
hint and stores only the chain's result, so the fault makes 1001 a stored value (a 1x1 MatMul reads it), which
bf16 holds as 1000: (stored - 1000) / (stored - 1000) is 0/0 in the bf16 engine and 1 in fp32.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import openvino as ov
import pytest
from onnx import helper, numpy_helper
from planted_nets import WINDOW, CosineNet, export_pair

from brr.backends import BACKENDS
from brr.backends.onnxrt.runner import onnxruntime_runner
from brr.backends.openvino.probing import OpenVINOTensors
from brr.diff import SyntheticWindows, run_diff
from brr.diff.engines import artifact_engine
from brr.diff.openvino_nodes import REPRODUCTION_FRACTION, OpenVINOLocaliser
from brr.model.contract import OUTPUT_NAME
from brr.onnx.stages import STAGE_METADATA_KEY
from brr.onnx.statistics import float_tensors
from brr.tolerances import TOLERANCES

NATIVE_BF16 = "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
needs_bf16 = pytest.mark.skipif(not NATIVE_BF16, reason="this CPU runs a bf16 hint in fp32")


def plant_stored_cancellation(model: onnx.ModelProto, tensor: str) -> onnx.ModelProto:
    """A copy of ``model`` whose readers of ``tensor`` read ``tensor * (e / e)``, e = MatMul(0 t + 1001, 1) - 1000."""
    planted = onnx.ModelProto.FromString(model.SerializeToString())
    graph = planted.graph
    graph.initializer.extend(numpy_helper.from_array(np.array(value, dtype), name) for name, value, dtype in (
        ("planted_zero", 0.0, np.float32), ("planted_big", 1001.0, np.float32), ("planted_offset", 1000.0, np.float32),
        ("planted_identity", [[1.0]], np.float32), ("planted_last_axis", [-1], np.int64)))
    made = [("Mul", [tensor, "planted_zero"], "planted_zeros"), ("Add", ["planted_zeros", "planted_big"], "planted_sum"),
            ("Unsqueeze", ["planted_sum", "planted_last_axis"], "planted_column"),
            ("MatMul", ["planted_column", "planted_identity"], "planted_stored"),
            ("Squeeze", ["planted_stored", "planted_last_axis"], "planted_row"),
            ("Sub", ["planted_row", "planted_offset"], "planted_cancel"),
            ("Div", ["planted_cancel", "planted_cancel"], "planted_div"),
            ("Mul", [tensor, "planted_div"], "planted_apply")]
    nodes = [helper.make_node(op, inputs, [name], name=name) for op, inputs, name in made]
    for node in nodes:
        node.metadata_props.add(key=STAGE_METADATA_KEY, value="tcn")
    kept = list(graph.node)
    for node in kept:
        node.input[:] = ["planted_apply" if name == tensor else name for name in node.input]
    at = next(i for i, node in enumerate(kept) if tensor in node.output) + 1
    del graph.node[:]
    graph.node.extend(kept[:at] + nodes + kept[at:])
    onnx.checker.check_model(planted)
    return planted


def openvino_engine(directory, fp32: onnx.ModelProto, precision: str):
    """The diff's engine of the OpenVINO artifact that brr's build makes of ``fp32`` (standard ops)."""
    onnx.save(fp32, str(directory / "model.onnx"))
    backend = BACKENDS["openvino"]
    engine_dir = directory / f"openvino-{precision}-standard"
    built = backend.build(directory / "model.onnx", "standard", engine_dir, precision, [], (1, 1, 1), None, None)
    manifest = {"backend": "openvino", "precision": precision, "ops": "standard", "model_file": built.model_file,
                "settings": built.settings}
    runner = backend.runner(engine_dir / built.model_file, manifest, probes=True, name=engine_dir.name)
    return artifact_engine(engine_dir, manifest, runner, fp32, None)


def diff(engine, fp32: onnx.ModelProto, **kwargs):
    """``engine`` against ONNX Runtime running ``fp32``, at the engine precision's tolerance."""
    return run_diff(onnxruntime_runner(fp32, "fp32-reference"), [engine], SyntheticWindows(1, WINDOW), **kwargs)


@pytest.fixture(scope="module")
def net() -> onnx.ModelProto:
    return export_pair(CosineNet(scale=1.0))[0]


@pytest.fixture(scope="module")
def clean_fp32(net, tmp_path_factory):
    return openvino_engine(tmp_path_factory.mktemp("clean"), net, "fp32")


@pytest.fixture(scope="module")
def planted_bf16(net, tmp_path_factory):
    planted = plant_stored_cancellation(net, "tanh")
    return planted, openvino_engine(tmp_path_factory.mktemp("planted"), planted, "bf16")


@needs_bf16
def test_a_bf16_fault_is_named_at_its_node_from_the_openvino_outputs(planted_bf16, tmp_path):
    """The origin is the planted Div, read in the engine as built; what OpenVINO does not keep is listed."""
    planted, engine = planted_bf16
    assert engine.localisable and engine.node_level_note is None
    report = diff(engine, planted, report_dir=tmp_path)
    result = report.engines[0]
    assert result.verdict == "nonfinite_precision" and report.failed
    level = result.inputs[0].node_level
    assert level.reproduced is True and level.observed_by[0] == "openvino_outputs"
    (origin,) = result.origins
    assert (origin.node, origin.op_type, origin.stage, origin.kind) == ("planted_div", "Div", "tcn", "precision")
    assert origin.cause == "cancellation" and "bf16" in origin.explanation
    assert origin.inputs[0].engine.zeros == origin.inputs[0].engine.elements  # 1001 - 1000 is 0 in bf16
    # Compared: every float tensor of the fp32 graph that the engine keeps; the others are listed.
    compared = {tensor.tensor for tensor in result.nodes.values()}
    unkept = [name for name in float_tensors(planted) if name not in engine.tensor_statistics.kept]
    assert level.unobserved == unkept and compared == set(float_tensors(planted)) - set(unkept)
    assert "planted_div" in compared and "planted_cancel" in compared
    notes = json.loads((tmp_path / "report.json").read_text())["engines"][0]["node_level_notes"]
    assert any("OpenVINO model compiled with the tensors it keeps as extra outputs" in note for note in notes)


def test_a_passing_input_is_left_to_the_probes(clean_fp32, net):
    """A scan compiles the model per run of tensors: an input whose probes pass is not scanned."""
    report = diff(clean_fp32, net)
    assert report.verdict == "clean" and report.engines[0].inputs[0].node_level is None


def test_marked_runs_reproduce_the_engine_in_runs_of_bounded_size(clean_fp32, net, monkeypatch):
    """With a budget of a few tensors a run, the ranges come in several runs, each run's logits the engine's."""
    monkeypatch.setattr(OpenVINOLocaliser, "scans_passing_inputs", True)
    tensors: OpenVINOTensors = clean_fp32.tensor_statistics
    feed = next(iter(SyntheticWindows(1, WINDOW)))
    names = [name for name in float_tensors(net) if name in tensors.kept]
    whole = tensors(names, feed)
    tensors.bytes_per_run = 2**14
    try:
        report = diff(clean_fp32, net)
        split = tensors(names, feed)
    finally:
        tensors.bytes_per_run = OpenVINOTensors(tensors.compiled).bytes_per_run
    assert len(whole.run_logits) == 1 and len(split.run_logits) > 3
    assert split.ranges.keys() == whole.ranges.keys()
    for name, read in split.ranges.items():  # the same values, whichever tensors share the run
        assert read.finite and read.size == whole.ranges[name].size
        assert read.abs_max == pytest.approx(whole.ranges[name].abs_max, rel=1e-5)
    level = report.engines[0].inputs[0].node_level
    atol, rtol = TOLERANCES["fp32"]
    assert report.verdict == "clean" and level.reproduced is True and level.first_nonfinite is None
    assert level.runs == 1 + len(split.run_logits)  # the fp32 graph's statistics run, then the engine's
    assert level.reproduction_error <= REPRODUCTION_FRACTION * (atol + rtol)


def _perturbed(change):
    """``OpenVINOTensors._run`` with ``change`` applied to the logits of every marked run."""
    original = OpenVINOTensors._run

    def run(self, names, feed, keep):
        outputs, marked = original(self, names, feed, keep)
        return outputs | {OUTPUT_NAME: change(outputs[OUTPUT_NAME])}, marked

    return run


def test_a_marked_run_that_moves_the_logits_falls_back_to_the_probes(clean_fp32, net, monkeypatch):
    monkeypatch.setattr(OpenVINOLocaliser, "scans_passing_inputs", True)
    monkeypatch.setattr(OpenVINOTensors, "_run", _perturbed(lambda logits: logits + 0.01))
    report = diff(clean_fp32, net)
    result = report.engines[0]
    level = result.inputs[0].node_level
    assert level.reproduced is False and level.reproduction_error == pytest.approx(0.01, rel=1e-3)
    assert "moved its logits by up to 0.01, more than 0.1 of the tolerance" in level.note
    assert "judged at its probes" in level.note and result.nodes == {}  # nothing read from it is kept
    assert report.verdict == "clean"  # the probes' verdict
    assert any("did not reproduce" in note for note in result.node_level_notes)


@needs_bf16
def test_a_fault_found_by_a_run_that_does_not_reproduce_is_not_reported(planted_bf16, monkeypatch):
    """Marked runs whose logits are finite where the engine's are NaN: no origin, the probes' verdict stands."""
    planted, engine = planted_bf16
    monkeypatch.setattr(OpenVINOTensors, "_run", _perturbed(np.zeros_like))
    report = diff(engine, planted)
    result = report.engines[0]
    level = result.inputs[0].node_level
    assert level.reproduced is False and result.origins == [] and level.ranges == {}
    assert "changed which logits are finite" in level.note
    assert result.verdict == "nonfinite_precision"  # the probes: the served logits are NaN
