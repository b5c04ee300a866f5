"""The strong-typing validator: brr's typed graphs pass it, and each rule catches what it is for."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from brr.backends import BACKENDS
from brr.errors import CheckFailed
from brr.export.precision_plan import load_plan, shipped_plan_names
from brr.onnx.precision import low_precision_model
from brr.onnx.quantize import QuantizeStaticQDQ
from brr.onnx.strong_typing import (
    Rule,
    Severity,
    StrongTypingError,
    check_strongly_typed,
    check_typed_graph,
    require_strongly_typed,
    require_strongly_typed_files,
)

OPSET = [helper.make_opsetid("", 18)]


def _model(nodes, inputs, outputs, initializers=(), value_info=(), opsets=OPSET):
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(initializers), value_info=list(value_info))
    return helper.make_model(graph, opset_imports=opsets)


def _info(name, elem_type, shape):
    return helper.make_tensor_value_info(name, elem_type, shape)


def _rules(violations):
    return {(v.node, v.rule) for v in violations}


# --- brr's own typed graphs ------------------------------------------------------------------------------


def test_every_shipped_plan_gives_a_strongly_typed_graph(small_exports):
    """Every shipped plan x fp16/bf16 x both ops modes of v3-small: the graph the engines are built from."""
    rows = []
    for ops, export in small_exports.items():
        stages = json.loads(export.stages.read_text())
        fp32 = onnx.load(str(export.model))
        for name in shipped_plan_names():
            plan = load_plan(name)
            pinned = plan.resolve(export.model, stages)
            for precision in set(plan.metadata["precisions"]) & {"fp16", "bf16"}:
                typed = low_precision_model(onnx.ModelProto.FromString(fp32.SerializeToString()), pinned, precision)
                report = check_typed_graph(typed, pinned)
                rows.append(f"{name:14s} {precision} {ops:8s}: {report.nodes_checked} nodes checked, "
                            f"{len(report.errors)} errors, {len(report.warnings)} warnings")
                assert report.violations == [], (name, precision, ops, [str(v) for v in report.violations[:5]])
                # The check saw the conversion: reduced-precision storage and the plan's fp32 nodes.
                casts = [n for n in typed.graph.node if n.op_type == "Cast"]
                assert len(casts) > 100 and pinned and report.nodes_checked > len(fp32.graph.node)
    print("\n" + "\n".join(rows))


def test_the_int8_qdq_graph_is_strongly_typed(small_exports):
    """Symmetric int8, fp32 biases: the Q/DQ graph TensorRT builds as it is."""
    window = np.random.default_rng(0).standard_normal((1, 19, 15360)).astype(np.float32)
    quantized = QuantizeStaticQDQ(small_exports["standard"].model, [window], [])()
    report = check_typed_graph(quantized)
    qdq = [n for n in quantized.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    print(f"\nint8 QDQ: {report.nodes_checked} nodes checked ({len(qdq)} Q/DQ), {len(report.violations)} violations")
    assert len(qdq) > 50 and report.violations == [], [str(v) for v in report.violations[:5]]


def test_an_engine_folder_is_checked_and_recorded(small_exports, small_model, tmp_path):
    export = small_exports["standard"]
    pinned = load_plan("fp16").resolve(export.model, json.loads(export.stages.read_text()))
    BACKENDS["onnxruntime"].build(export.model, "standard", tmp_path, "fp16", pinned, (1, 1, 1), small_model.config,
                                  None)
    recorded = require_strongly_typed_files(tmp_path, pinned)["strong_typing"]["model.onnx"]
    assert recorded["nodes_checked"] > 0 and recorded["errors"] == []
    assert require_strongly_typed_files(tmp_path / "no-graph") == {}
    (tmp_path / "broken").mkdir()
    onnx.save(_mixed_matmul(), str(tmp_path / "broken" / "model.onnx"))
    with pytest.raises(StrongTypingError, match=r"broken/model.onnx breaks .* mm \(MatMul\)"):
        require_strongly_typed_files(tmp_path / "broken")


# --- each rule on a handmade graph -----------------------------------------------------------------------


def _mixed_matmul():
    return _model([helper.make_node("Cast", ["w"], ["w16"], to=TensorProto.FLOAT16, name="to16"),
                   helper.make_node("MatMul", ["x", "w16"], ["y"], name="mm")],
                  [_info("x", TensorProto.FLOAT, [2, 3]), _info("w", TensorProto.FLOAT, [3, 4])],
                  [_info("y", TensorProto.FLOAT, [2, 4])])


def test_a_matmul_mixing_fp16_and_fp32_is_a_violation_naming_it():
    violations = check_strongly_typed(_mixed_matmul())
    mixed = [v for v in violations if v.rule is Rule.MIXED_OPERANDS]
    assert [(v.node, v.op_type) for v in mixed] == [("mm", "MatMul")]
    assert "tensor(float16)" in mixed[0].message and "tensor(float)" in mixed[0].message
    with pytest.raises(StrongTypingError, match=r"mm \(MatMul\): mixed_operands") as raised:
        require_strongly_typed(_mixed_matmul(), what="planted")
    assert isinstance(raised.value, CheckFailed)


def test_positions_the_schema_lets_differ_are_not_violations():
    """Reshape's int64 shape, Gather's indices, Where's bool condition, Cast, Expand's shape beside fp16 data."""
    nodes = [helper.make_node("Cast", ["x"], ["h"], to=TensorProto.FLOAT16, name="cast"),
             helper.make_node("Reshape", ["h", "shape"], ["r"], name="reshape"),
             helper.make_node("Gather", ["r", "idx"], ["g"], axis=0, name="gather"),
             helper.make_node("Greater", ["g", "zero"], ["c"], name="greater"),
             helper.make_node("Where", ["c", "g", "zero"], ["w"], name="where"),
             helper.make_node("Expand", ["w", "shape2"], ["y"], name="expand")]
    inits = [numpy_helper.from_array(np.array([3, 2], np.int64), "shape"),
             numpy_helper.from_array(np.array([0, 2], np.int64), "idx"),
             numpy_helper.from_array(np.array(0, np.float16), "zero"),
             numpy_helper.from_array(np.array([2, 2], np.int64), "shape2")]
    model = _model(nodes, [_info("x", TensorProto.FLOAT, [2, 3])], [_info("y", TensorProto.FLOAT16, [2, 2])], inits)
    assert check_strongly_typed(model) == []
    # An int32 shape where the schema says int64 is not.
    inits[0] = numpy_helper.from_array(np.array([3, 2], np.int32), "shape")
    model = _model(nodes, [_info("x", TensorProto.FLOAT, [2, 3])], [_info("y", TensorProto.FLOAT16, [2, 2])], inits)
    assert ("reshape", Rule.TYPE_NOT_ALLOWED) in _rules(check_strongly_typed(model))


def test_a_pinned_node_consuming_fp16_is_a_violation():
    nodes = [helper.make_node("Cast", ["x"], ["h"], to=TensorProto.FLOAT16, name="store"),
             helper.make_node("Relu", ["h"], ["r"], name="act"),
             helper.make_node("Cast", ["r"], ["y"], to=TensorProto.FLOAT, name="load")]
    model = _model(nodes, [_info("x", TensorProto.FLOAT, [4])], [_info("y", TensorProto.FLOAT, [4])])
    assert check_strongly_typed(model) == []  # unpinned, an fp16 Relu is what the graph says
    violations = check_strongly_typed(model, fp32_nodes=["act"])
    assert [(v.node, v.rule) for v in violations] == [("act", Rule.PINNED_NOT_FP32)]
    assert "'h' is tensor(float16)" in violations[0].message
    missing = check_strongly_typed(model, fp32_nodes=["gone"])
    assert [(v.node, v.rule) for v in missing] == [("gone", Rule.PINNED_MISSING)]


@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")  # the overflow under test
def test_an_fp16_weight_beyond_its_range_is_a_violation():
    """The exporter's own conversion: a weight of 1e5 stored in fp16 becomes inf."""
    weight = np.array([1.0, 1e5, -2.0], np.float32)
    fp32 = _model([helper.make_node("Mul", ["x", "w"], ["m"], name="scale"),
                   helper.make_node("Relu", ["m"], ["y"], name="act")],
                  [_info("x", TensorProto.FLOAT, [3])], [_info("y", TensorProto.FLOAT, [3])],
                  [numpy_helper.from_array(weight, "w")])
    typed = low_precision_model(fp32, [], "fp16")
    violations = check_strongly_typed(typed)
    assert [(v.op_type, v.rule) for v in violations] == [("initializer", Rule.INITIALIZER_NOT_FINITE)]
    assert violations[0].node == "w_fp16_weight" and "1 of 3" in violations[0].message
    # Pinning the node that reads it keeps the weight in fp32: nothing to report.
    assert check_strongly_typed(low_precision_model(fp32, ["scale"], "fp16"), ["scale"]) == []
    # bf16 has fp32's range.
    assert check_strongly_typed(low_precision_model(fp32, [], "bf16")) == []


def test_an_fp16_weight_of_mostly_subnormals_is_a_warning():
    tiny = numpy_helper.from_array(np.full(8, 1e-6, np.float16), "tiny")
    model = _model([helper.make_node("Mul", ["x", "tiny"], ["y"], name="scale")],
                   [_info("x", TensorProto.FLOAT16, [8])], [_info("y", TensorProto.FLOAT16, [8])], [tiny])
    (violation,) = check_strongly_typed(model)
    assert violation.rule is Rule.INITIALIZER_SUBNORMAL and violation.severity is Severity.WARNING
    assert require_strongly_typed(model).warnings == [violation]  # a warning does not fail


def _dequantize(scale, zero_point=0, quantized=TensorProto.INT8):
    zero_type = helper.tensor_dtype_to_np_dtype(quantized)
    inits = [numpy_helper.from_array(np.array(scale, np.float32), "scale"),
             numpy_helper.from_array(np.array(zero_point, zero_type), "zp")]
    return _model([helper.make_node("DequantizeLinear", ["q", "scale", "zp"], ["y"], name="dq")],
                  [_info("q", quantized, [4])], [_info("y", TensorProto.FLOAT, [4])], inits)


def test_a_well_formed_dequantize_passes():
    assert check_strongly_typed(_dequantize(0.02)) == []


@pytest.mark.parametrize("scale", [0.0, float("nan"), float("inf"), -0.5])
def test_a_dequantize_with_a_bad_scale_is_a_violation(scale):
    violations = check_strongly_typed(_dequantize(scale))
    assert _rules(violations) == {("dq", Rule.QDQ_SCALE)}


@pytest.mark.parametrize("zero_point, quantized, rules", [
    (3, TensorProto.INT8, {Rule.QDQ_ZERO_POINT}), (0, TensorProto.UINT8, {Rule.QDQ_TYPE}),
    (128, TensorProto.UINT8, {Rule.QDQ_TYPE, Rule.QDQ_ZERO_POINT}), (0, TensorProto.INT32, {Rule.QDQ_TYPE}),
])
def test_an_asymmetric_uint8_or_int32_quantization_is_a_violation(zero_point, quantized, rules):
    assert _rules(check_strongly_typed(_dequantize(0.02, zero_point, quantized))) == {("dq", r) for r in rules}


def test_a_custom_node_takes_one_float_type():
    opsets = [*OPSET, helper.make_opsetid("ai.onnx.contrib", 1)]
    nodes = [helper.make_node("Cast", ["a"], ["a16"], to=TensorProto.FLOAT16, name="to16"),
             helper.make_node("SelectiveScan", ["a16", "b"], ["y"], domain="ai.onnx.contrib", name="scan")]
    inputs = [_info("a", TensorProto.FLOAT, [4]), _info("b", TensorProto.FLOAT, [4])]
    model = _model(nodes, inputs, [_info("y", TensorProto.FLOAT, [4])], opsets=opsets)
    assert _rules(check_strongly_typed(model)) == {("scan", Rule.MIXED_OPERANDS)}
    nodes[0] = helper.make_node("Identity", ["a"], ["a16"], name="to16")
    assert check_strongly_typed(_model(nodes, inputs, [_info("y", TensorProto.FLOAT, [4])], opsets=opsets)) == []


def test_an_untyped_value_is_reported_not_guessed():
    opsets = [*OPSET, helper.make_opsetid("ai.onnx.contrib", 1)]
    nodes = [helper.make_node("SymmetricEigh", ["a"], ["w"], domain="ai.onnx.contrib", name="eigh"),
             helper.make_node("Relu", ["w"], ["y"], name="act")]
    model = _model(nodes, [_info("a", TensorProto.FLOAT, [3, 3])], [helper.make_value_info("y", onnx.TypeProto())],
                   opsets=opsets)
    assert _rules(check_strongly_typed(model)) == {("eigh", Rule.UNKNOWN_TYPE), ("act", Rule.UNKNOWN_TYPE)}
