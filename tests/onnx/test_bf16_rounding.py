"""The bf16 typed graph rounds where its types say bf16, and nowhere else: ONNX Runtime's CPU provider
(which runs it: only its Casts touch bf16) and OpenVINO reading the same file equal, bit for bit, a numpy
emulation that rounds to nearest even (``ml_dtypes.bfloat16``) at exactly those points.

The graph is elementwise (Mul, Add, Sqrt, Div, Sub, Relu), whose fp32 results are correctly rounded in
every runtime, so any difference would be a rounding point placed differently, never accumulation order.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from brr.onnx.precision import low_precision_model

N = 4096
EPS = np.float32(1e-3)
PINNED = ("square", "add_eps", "root", "normalise")  # a norm-like island the plan keeps in fp32
ROUNDED_ACTIVATIONS = {"x", "a", "b", "q", "d"}  # where ``emulate`` rounds an activation


def _weights():
    rng = np.random.default_rng(3)
    return rng.standard_normal(N).astype(np.float32), rng.standard_normal(N).astype(np.float32), np.float32(0.1)


def _fp32_graph() -> onnx.ModelProto:
    w1, c1, c2 = _weights()
    nodes = [helper.make_node("Mul", ["x", "w1"], ["a"], name="scale"),
             helper.make_node("Add", ["a", "c1"], ["b"], name="shift"),
             helper.make_node("Mul", ["b", "b"], ["s"], name="square"),
             helper.make_node("Add", ["s", "eps"], ["se"], name="add_eps"),
             helper.make_node("Sqrt", ["se"], ["r"], name="root"),
             helper.make_node("Div", ["b", "r"], ["q"], name="normalise"),
             helper.make_node("Sub", ["q", "c2"], ["d"], name="offset"),
             helper.make_node("Relu", ["d"], ["y"], name="relu")]
    inits = [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(c1, "c1"),
             numpy_helper.from_array(np.array(c2), "c2"), numpy_helper.from_array(np.array(EPS), "eps")]
    graph = helper.make_graph(nodes, "island", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, N])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, N])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def round_to_nearest_even(v):
    return np.asarray(v, np.float32).astype(ml_dtypes.bfloat16).astype(np.float32)


def truncate(v):
    return (np.asarray(v, np.float32).view(np.uint32) & np.uint32(0xFFFF0000)).view(np.float32)


def emulate(x, rounding):
    """What the bf16 plan means, in numpy fp32: ``rounding`` applied where a value is stored in bf16 (the
    weights and the input of low-precision nodes, every low-precision node's output, the pinned island's
    output where a low-precision node reads it), the island computed in fp32, the graph output as computed."""
    w1, c1, c2 = (rounding(w) for w in _weights())
    a = rounding(rounding(x) * w1)
    b = rounding(a + c1)
    q = b / np.sqrt(b * b + EPS)  # pinned: fp32 in, fp32 out, eps kept in fp32
    d = rounding(rounding(q) - c2)
    return np.maximum(d, np.float32(0))


@pytest.fixture(scope="module")
def typed():
    return low_precision_model(_fp32_graph(), PINNED, "bf16")


@pytest.fixture(scope="module")
def window():
    return (np.random.default_rng(4).standard_normal((1, N)) * 3).astype(np.float32)


def _bits(v):
    return np.asarray(v, np.float32).view(np.uint32)


def test_the_graph_stores_in_bf16_exactly_where_the_emulation_rounds(typed):
    inferred = onnx.shape_inference.infer_shapes(typed, strict_mode=True)
    elem = {v.name: v.type.tensor_type.elem_type for v in (*inferred.graph.value_info, *inferred.graph.output)}
    original = {t for n in _fp32_graph().graph.node for t in (*n.input, *n.output)} | {"x"}
    stored = set()
    for node in typed.graph.node:
        if node.op_type == "Cast" and node.attribute[0].i == TensorProto.BFLOAT16:
            # A node's rounded output keeps its tensor's name; an input's or the island's gets a new one.
            stored.add(node.output[0] if node.output[0] in original else node.input[0])
    assert stored == ROUNDED_ACTIVATIONS
    assert all(elem[name] == TensorProto.FLOAT for name in ("s", "se", "r", "q", "y"))
    stored_weights = [numpy_helper.to_array(i).astype(np.float32) for i in typed.graph.initializer
                      if i.data_type == TensorProto.BFLOAT16]
    assert sorted(_bits(w).tobytes() for w in stored_weights) == sorted(
        _bits(round_to_nearest_even(w)).tobytes() for w in _weights())
    fp32_weights = [numpy_helper.to_array(i) for i in typed.graph.initializer if i.data_type == TensorProto.FLOAT]
    assert fp32_weights == [EPS]  # read by the island only: kept in fp32


def test_onnxruntime_equals_the_emulation_bit_for_bit(typed, window):
    session = ort.InferenceSession(typed.SerializeToString(), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"x": window})
    assert np.array_equal(_bits(got), _bits(emulate(window, round_to_nearest_even)))
    # The emulation has teeth: fp32 storage, or truncating instead of rounding, is not what ran.
    assert not np.array_equal(got, emulate(window, lambda v: np.asarray(v, np.float32)))
    assert not np.array_equal(got, emulate(window, truncate))


def test_openvino_reading_the_same_typed_onnx_equals_it_bit_for_bit(typed, window):
    import openvino as ov

    from brr.backends.openvino.loader import compile_model

    core = ov.Core()
    model = core.read_model(typed.SerializeToString(), b"")
    compiled = compile_model(core, model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    got = compiled({"x": window})[0]
    assert np.array_equal(_bits(got), _bits(emulate(window, round_to_nearest_even)))
