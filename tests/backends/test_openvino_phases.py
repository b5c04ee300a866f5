"""OpenVINO's lowering runs widely dilated convolutions on phases (the rewrite ``lowering/phases.py``): the
same numbers, on the convolutions it should touch only (saying at debug level why it leaves one), and a pinned
convolution's new layers stay in fp32 with it."""

from __future__ import annotations

import logging
import xml.etree.ElementTree as ET

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from brr.backends.openvino.loader import build_engine
from brr.backends.openvino.lowering import PHASE_DILATION, lower_for_openvino, phases

LENGTH, CHANNELS = 1024, 6


def _graph(dilations: list[int], length: int = LENGTH, probe_last: bool = False) -> onnx.ModelProto:
    """eeg -> [Conv(dilation d, 'same') -> Relu] per d, the weights made by a Mul as weight norm makes them;
    the last convolution's output is also read by an Add, and with ``probe_last`` is a graph output."""
    rng = np.random.default_rng(0)
    nodes, inits, value = [], [], "x"
    for i, d in enumerate(dilations):
        inits += [numpy_helper.from_array(rng.standard_normal((CHANNELS, CHANNELS, 7)).astype(np.float32), f"v{i}"),
                  numpy_helper.from_array(np.float32(0.3), f"g{i}"),
                  numpy_helper.from_array(rng.standard_normal(CHANNELS).astype(np.float32), f"b{i}")]
        nodes += [helper.make_node("Mul", [f"v{i}", f"g{i}"], [f"w{i}"], name=f"norm{i}"),
                  helper.make_node("Conv", [value, f"w{i}", f"b{i}"], [f"c{i}"], dilations=[d], pads=[3 * d, 3 * d],
                                   name=f"conv{i}"),
                  helper.make_node("Relu", [f"c{i}"], [f"r{i}"], name=f"relu{i}")]
        value = f"r{i}"
    last = f"c{len(dilations) - 1}"
    nodes.append(helper.make_node("Add", [last, value], ["y"], name="residual"))
    shape = ["batch", CHANNELS, length]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)]
    if probe_last:
        outputs.append(helper.make_tensor_value_info(last, TensorProto.FLOAT, shape))
    graph = helper.make_graph(nodes, "dilated", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def _run(model: onnx.ModelProto, x: np.ndarray) -> list[np.ndarray]:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})


def test_phases_give_the_dilated_convolutions_numbers():
    model = _graph([1, PHASE_DILATION, 2 * PHASE_DILATION])
    lowered, counts = lower_for_openvino(model, fp32_everywhere=True, scans=False)
    assert counts["phased_convolutions"] == 2
    convs = {n.name: {a.name: list(a.ints) for a in n.attribute} for n in lowered.graph.node if n.op_type == "Conv"}
    assert convs["conv0"]["dilations"] == [1] and convs["conv0"]["pads"] == [3, 3]  # dilation 1: untouched
    assert convs["conv1"]["dilations"] == [1] and convs["conv1"]["pads"] == [3, 3]
    assert convs["conv2"]["dilations"] == [1] and convs["conv2"]["pads"] == [3, 3]
    onnx.checker.check_model(lowered)
    x = np.random.default_rng(1).standard_normal((3, CHANNELS, LENGTH)).astype(np.float32)
    np.testing.assert_allclose(_run(lowered, x)[0], _run(model, x)[0], rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("case, model, fp32_everywhere, fp32_nodes, reason", [
    ("narrow dilation", _graph([PHASE_DILATION // 2]), True, (),
     f"dilation {PHASE_DILATION // 2} < {PHASE_DILATION}"),
    ("length not divisible by the dilation", _graph([PHASE_DILATION], length=LENGTH + 8), True, (),
     f"length {LENGTH + 8} is no multiple of its dilation {PHASE_DILATION}"),
    ("output is a graph output", _graph([PHASE_DILATION], probe_last=True), True, (),
     "its output is a graph output"),
    ("bf16 engine, convolution pinned", _graph([PHASE_DILATION]), False, ("conv0",),
     "a reduced-precision build would store its phases' output in bf16"),
    # Not a candidate at all: no line.
    ("bf16 engine, convolution not pinned", _graph([PHASE_DILATION]), False, ("relu0",), None),
])
def test_convolutions_left_alone(case, model, fp32_everywhere, fp32_nodes, reason, caplog):
    caplog.set_level(logging.DEBUG, logger=phases.__name__)
    lowered, counts = lower_for_openvino(model, fp32_everywhere=fp32_everywhere, fp32_nodes=fp32_nodes, scans=False)
    assert counts["phased_convolutions"] == 0, case
    assert [n.op_type for n in lowered.graph.node] == [n.op_type for n in model.graph.node], case
    declined = [r.getMessage() for r in caplog.records if r.name == phases.__name__]
    assert declined == ([] if reason is None else [f"conv0 (Conv) left as it is: {reason}"]), case


def test_a_pinned_convolution_of_a_bf16_engine_stays_whole_and_in_fp32(tmp_path):
    """OpenVINO stores a phased convolution's output in bf16 at its first reshape under a bf16 hint, whatever the
    marks say, and the pinned ReLU after it would compute on the rounded value: a bf16 build keeps the pinned
    convolution whole, marked precise, and the execution graph shows the plan applied."""
    source = tmp_path / "model.onnx"
    onnx.save(_graph([PHASE_DILATION, PHASE_DILATION]), str(source))
    pinned, settings = build_engine(source, "standard", tmp_path / "engine", "bf16", ["conv0", "relu0"])
    assert settings["phased_convolutions"] == 0 and pinned == ["conv0", "relu0"]
    precise = {layer.get("name") for layer in ET.parse(tmp_path / "engine" / "model.xml").getroot().iter("layer")
               if any(a.get("name") == "precise" for a in layer.iter("attribute"))}
    assert "conv0" in {name.split("/")[0] for name in precise}
    assert not any(name.startswith("conv1") for name in precise)
    assert settings["plan_applied"]["pinned_layers_executed"] > 0