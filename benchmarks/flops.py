"""Model FLOPs per window counted from the ONNX graph (MatMul, Gemm, Conv), not by hand."""

from __future__ import annotations

import math

import onnx
from onnx import shape_inference


def _static_shape(value_info) -> list[int] | None:
    dims = value_info.type.tensor_type.shape.dim
    shape = [d.dim_value if d.HasField("dim_value") else None for d in dims]
    return None if any(d is None for d in shape) else shape


def fix_batch(model: onnx.ModelProto, batch: int = 1) -> onnx.ModelProto:
    model = onnx.ModelProto.FromString(model.SerializeToString())
    for tensor in list(model.graph.input) + list(model.graph.output):
        dim = tensor.type.tensor_type.shape.dim[0]
        dim.Clear()
        dim.dim_value = batch
    return model


def count_flops(model: onnx.ModelProto, batch: int = 1) -> dict[str, float]:
    """FLOPs (2 per multiply-add) of every MatMul, Gemm and Conv at a fixed batch, by op type."""
    inferred = shape_inference.infer_shapes(fix_batch(model, batch), data_prop=True)
    shapes = {}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
        shape = _static_shape(vi)
        if shape is not None:
            shapes[vi.name] = shape
    for init in inferred.graph.initializer:
        shapes[init.name] = list(init.dims)
    totals: dict[str, float] = {"MatMul": 0.0, "Gemm": 0.0, "Conv": 0.0, "uncounted_nodes": 0.0}
    for node in inferred.graph.node:
        if node.op_type not in ("MatMul", "Gemm", "Conv"):
            continue
        out = shapes.get(node.output[0])
        a = shapes.get(node.input[0])
        w = shapes.get(node.input[1])
        if out is None or a is None or w is None:
            totals["uncounted_nodes"] += 1
            continue
        if node.op_type == "MatMul":
            totals["MatMul"] += 2 * math.prod(out) * a[-1]
        elif node.op_type == "Gemm":
            trans_a = next((att.i for att in node.attribute if att.name == "transA"), 0)
            totals["Gemm"] += 2 * math.prod(out) * (a[0] if trans_a else a[-1])
        else:
            # w is (C_out, C_in / group, *kernel): grouping is already in its second dimension.
            totals["Conv"] += 2 * math.prod(out) * w[1] * math.prod(w[2:])
    totals["total"] = totals["MatMul"] + totals["Gemm"] + totals["Conv"]
    return totals
