"""The engine inspector's JSON, TensorRT 10.x and 11.x, and the check that the plan was applied.

The documents are small engines written to each schema: TensorRT 10.x gives a tensor's layout and type
as one "Format/Datatype" string and the I/O tensors as "Bindings"; 11.x splits "Format" and "Datatype"
and describes each I/O tensor under "I/O Tensors". Each holds a fused cosine norm (Pow, ReduceSum,
Sqrt) that the plan pins, fed by a Cast fused into it, and the logits.
"""

from __future__ import annotations

import json

import pytest
from onnx import TensorProto, helper

from brr.backends import EngineBuildError
from brr.backends.trt.inspector import (
    TensorType,
    check_plan_applied,
    kept_fp32_tensors,
    layer_nodes,
    nodes_without_layer,
    parse_engine_information,
    plan_violations,
    tensor_type,
)

PINNED = ["node_Pow_3", "node_ReduceSum_4", "node_Sqrt_5"]


def tensor_10(name: str, dims: list[int], fmt_type: str) -> dict:
    return {"Name": name, "Location": "Device", "Dimensions": dims, "Format/Datatype": fmt_type}


def tensor_11(name: str, dims: list[int], fmt: str, dtype: str) -> dict:
    return {"Name": name, "Location": "Device", "Dimensions": dims, "Format": fmt, "Datatype": dtype}


def engine_10(norm_type: str = "Row major linear FP32 format") -> str:
    """A TensorRT 10.x engine: the Cast storing x in fp16, the norm fused with the Cast back (input fp16),
    its output ``norm`` of type ``norm_type``, the Gemm making the logits."""
    return json.dumps({"Layers": [
        {"Name": "x_to_fp16", "LayerType": "Reformat",
         "Inputs": [tensor_10("eeg", [1, 19, 1920], "Row major linear FP32 format")],
         "Outputs": [tensor_10("x", [1, 16, 120], "Row major linear FP16 format")],
         "Metadata": "[ONNX Layer: x_to_fp16]", "TacticValue": "0x0", "StreamId": 0},
        {"Name": "x_for_node_Pow_3_0 + node_Pow_3 + node_ReduceSum_4 + node_Sqrt_5", "LayerType": "Myelin",
         "Inputs": [tensor_10("x", [1, 16, 120], "Row major linear FP16 format")],
         "Outputs": [tensor_10("norm", [1, 1, 120], norm_type)],
         "Metadata": "[ONNX Layer: x_for_node_Pow_3_0]\x1e[ONNX Layer: node_Pow_3]\x1e[ONNX Layer: node_ReduceSum_4]"
                     "\x1e[ONNX Layer: node_Sqrt_5]", "TacticValue": "0x1", "StreamId": 0},
        {"Name": "node_Gemm_9", "LayerType": "CaskGemm",
         "Inputs": [tensor_10("norm", [1, 1, 120], norm_type)],
         "Outputs": [tensor_10("logits", [1, 1920], "Row major linear FP32 format")],
         "Metadata": "[ONNX Layer: node_Gemm_9]", "TacticValue": "0x2", "StreamId": 0},
    ], "Bindings": ["eeg", "logits"]})


def engine_11(norm_type: str = "FP32") -> str:
    """The same engine as TensorRT 11.x describes it."""
    return json.dumps({"Layers": [
        {"Name": "x_to_fp16", "LayerType": "Reformat",
         "Inputs": [tensor_11("eeg", [1, 19, 1920], "Row major linear", "FP32")],
         "Outputs": [tensor_11("x", [1, 16, 120], "Row major linear", "FP16")],
         "Metadata": "[ONNX Layer: x_to_fp16]", "TacticValue": "0x0", "StreamId": 0},
        {"Name": "x_for_node_Pow_3_0 + node_Pow_3 + node_ReduceSum_4 + node_Sqrt_5", "LayerType": "Myelin",
         "Inputs": [tensor_11("x", [1, 16, 120], "Row major linear", "FP16")],
         "Outputs": [tensor_11("norm", [1, 1, 120], "Row major linear", norm_type)],
         "Metadata": "[ONNX Layer: x_for_node_Pow_3_0]\x1e[ONNX Layer: node_Pow_3]\x1e[ONNX Layer: node_ReduceSum_4]"
                     "\x1e[ONNX Layer: node_Sqrt_5]", "TacticValue": "0x1", "StreamId": 0},
        {"Name": "node_Gemm_9", "LayerType": "CaskGemm",
         "Inputs": [tensor_11("norm", [1, 1, 120], "Row major linear", norm_type)],
         "Outputs": [tensor_11("logits", [1, 1920], "Row major linear", "FP32")],
         "Metadata": "[ONNX Layer: node_Gemm_9]", "TacticValue": "0x2", "StreamId": 0},
    ], "I/O Tensors": [
        {"Name": "eeg", "IOMode": "Input", "DataType": "Float", "Dimensions": [-1, 19, 1920], "Location": "Device",
         "IsShapeInferenceIO": False, "ProfileInfo": [{"MinShape": [1, 19, 1920], "OptShape": [1, 19, 1920],
                                                       "MaxShape": [1, 19, 1920],
                                                       "Format": "Row major linear FP32 format (kLINEAR)"}]},
        {"Name": "logits", "IOMode": "Output", "DataType": "Float", "Dimensions": [-1, 1920], "Location": "Device",
         "IsShapeInferenceIO": False},
    ]})


def typed_graph():
    """The typed graph of the engines above: x stored in fp16, cast back to fp32 for the pinned norm."""
    nodes = [
        helper.make_node("Slice", ["eeg", "starts", "ends"], ["x_unrounded"], name="node_Slice_1"),
        helper.make_node("Cast", ["x_unrounded"], ["x"], to=TensorProto.FLOAT16, name="x_to_fp16"),
        helper.make_node("Cast", ["x"], ["x_for_node_Pow_3_0"], to=TensorProto.FLOAT, name="x_for_node_Pow_3_0"),
        helper.make_node("Pow", ["x_for_node_Pow_3_0", "two"], ["pow"], name="node_Pow_3"),
        helper.make_node("ReduceSum", ["pow", "axes"], ["sum"], name="node_ReduceSum_4"),
        helper.make_node("Sqrt", ["sum"], ["norm"], name="node_Sqrt_5"),
        helper.make_node("Gemm", ["norm", "w"], ["logits"], name="node_Gemm_9"),
    ]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("eeg", TensorProto.FLOAT, [1, 19, 1920])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 1920])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


@pytest.mark.parametrize(("text", "expected"), [
    ("Row major linear FP32 format", TensorType.FP32), ("Channel major FP16 format where channel % 8 == 0",
                                                        TensorType.FP16),
    ("Thirty-two wide channel vectorized row major Int8 format.", TensorType.INT8),
    ("Row major linear BF16 format", TensorType.BF16), ("Half", TensorType.FP16), ("Float", TensorType.FP32),
    ("BFloat16", TensorType.BF16), ("kHALF", TensorType.FP16), ("Int64", TensorType.INT64),
    ("FP8", TensorType.FP8), ("Row major linear", TensorType.UNKNOWN), ("", TensorType.UNKNOWN),
])
def test_tensor_types_from_both_schemas(text, expected):
    assert tensor_type(text) is expected


def test_layers_are_mapped_to_onnx_nodes_by_name_and_metadata():
    assert layer_nodes("node_Exp_3", "") == {"node_Exp_3"}
    assert layer_nodes("ForeignNode[a...b]", "[ONNX Layer: node_Softplus_1]\x1e[ONNX Layer: node_Exp_30]") == {
        "ForeignNode[a...b]", "node_Softplus_1", "node_Exp_30"}
    assert layer_nodes("node_A + node_B", None) == {"node_A + node_B", "node_A", "node_B"}


@pytest.mark.parametrize(("document", "schema"), [(engine_10(), 10), (engine_11(), 11)])
def test_both_schemas_read_alike(document, schema):
    info = parse_engine_information(document)
    assert info.schema == schema and [layer.layer_type for layer in info.layers] == ["Reformat", "Myelin", "CaskGemm"]
    norm = info.layers[1]
    assert set(PINNED) <= norm.nodes and "x_for_node_Pow_3_0" in norm.nodes
    assert [(t.name, t.type) for t in norm.tensors] == [("x", TensorType.FP16), ("norm", TensorType.FP32)]
    assert info.outputs({"eeg"}) == ["logits"]
    assert nodes_without_layer(info, [*PINNED, "node_Constant_2"]) == ["node_Constant_2"]


@pytest.mark.parametrize("document", [engine_10(), engine_11()])
def test_the_plan_holds_where_the_pinned_norm_stores_fp32(document):
    """The norm reads the fp16 stored x through its fused Cast: that tensor is the Cast's, not the norm's."""
    check_plan_applied(parse_engine_information(document), typed_graph(), PINNED, "fp16")


@pytest.mark.parametrize("document", [engine_10("Row major linear FP16 format"), engine_11("FP16")])
def test_a_pinned_node_found_in_fp16_fails_with_its_name(document):
    info = parse_engine_information(document)
    violations = plan_violations(info, kept_fp32_tensors(typed_graph(), PINNED))
    # norm is node_Sqrt_5's output (in its layer) and node_Gemm_9's input: the pinned Sqrt is named.
    assert [(v.node, v.tensor, v.type) for v in violations] == [("node_Sqrt_5", "norm", TensorType.FP16)]
    with pytest.raises(EngineBuildError, match=r"node_Sqrt_5: norm is fp16 in engine layer"):
        check_plan_applied(info, typed_graph(), PINNED, "fp16")
    check_plan_applied(info, typed_graph(), [], "fp16")  # without the pin, a stored fp16 norm is the plan


def test_an_fp32_engine_holds_no_reduced_precision_at_all():
    with pytest.raises(EngineBuildError, match=r"fp32 engine .* x_to_fp16: x is fp16"):
        check_plan_applied(parse_engine_information(engine_11()), typed_graph(), [], "fp32")


def test_pins_inside_a_loop_body_are_found():
    body = helper.make_graph([helper.make_node("Exp", ["a"], ["b"], name="inner_exp")], "body", [], [])
    loop = helper.make_node("Loop", ["n", "c"], ["out"], name="loop", body=body)
    graph = helper.make_graph([loop], "g", [], [])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    assert kept_fp32_tensors(model, ["inner_exp", "loop"]) == {"inner_exp": {"a", "b"}, "loop": {"n", "c", "out"}}


def test_an_engine_described_by_layer_names_only_cannot_be_checked():
    with pytest.raises(EngineBuildError, match="ProfilingVerbosity.DETAILED"):
        parse_engine_information(json.dumps({"Layers": ["x_to_fp16", "node_Gemm_9"], "Bindings": ["eeg", "logits"]}))
