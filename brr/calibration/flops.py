"""FLOPs per ONNX node (MatMul, Gemm, Conv and the plugin graph's SelectiveScan), counted from inferred shapes
at a fixed batch, and the transcendental evaluations (sigmoid, exp, softplus, ...) of the others.

``count_flops`` (totals by op type) is the model's count that ``benchmarks/run.py`` measures engines against;
``node_flops`` gives the same count per node, which a precision plan needs for the share of work its fp32
nodes keep and the benchmark for each stage's distance to its compute limit.
"""

from __future__ import annotations

import math

import onnx
from onnx import shape_inference

COUNTED_OP_TYPES = ("MatMul", "Gemm", "Conv", "SelectiveScan")
# The selective scan's recurrence per (token, head, head-dim lane, state): S = exp(a A) S + (a x) B, a multiply
# and a multiply-add, then y += S C, a multiply-add (a standard graph's decomposition of it is counted as the
# MatMuls it is made of).
SCAN_FLOPS_PER_STATE = 5
# Elementwise ops that evaluate an exponential or logarithm per value: each takes the vector units tens of
# operations, which no FLOP count sees (one AVX-512 core of an AMD EPYC: ~4 G SiLU values/s against ~200
# GFLOP/s of fp32 multiply-adds). v3's node and edge streams evaluate ~115 M SiLU values a window.
TRANSCENDENTAL_OP_TYPES = ("Sigmoid", "Exp", "Softplus", "Tanh", "Log", "Erf", "HardSwish", "Gelu")


def _static_shape(value_info) -> list[int] | None:
    dims = value_info.type.tensor_type.shape.dim
    shape = [d.dim_value if d.HasField("dim_value") else None for d in dims]
    return None if any(d is None for d in shape) else shape


def fix_batch(model: onnx.ModelProto, batch: int = 1) -> onnx.ModelProto:
    """A copy with the first dimension of every graph input and output set to ``batch``."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    for tensor in list(model.graph.input) + list(model.graph.output):
        dims = tensor.type.tensor_type.shape.dim
        if dims:
            dims[0].Clear()
            dims[0].dim_value = batch
    return model


def _inferred(model: onnx.ModelProto, batch: int) -> tuple[onnx.ModelProto, dict[str, list[int]]]:
    """The model with inferred shapes at ``batch``, and every value's static shape."""
    inferred = shape_inference.infer_shapes(fix_batch(model, batch), data_prop=True)
    shapes = {}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
        shape = _static_shape(vi)
        if shape is not None:
            shapes[vi.name] = shape
    for init in inferred.graph.initializer:
        shapes[init.name] = list(init.dims)
    return inferred, shapes


def node_flops(model: onnx.ModelProto, batch: int = 1) -> dict[str, float | None]:
    """Node name -> FLOPs (2 per multiply-add) of every MatMul, Gemm, Conv and SelectiveScan; None where a shape
    is unknown."""
    inferred, shapes = _inferred(model, batch)
    flops: dict[str, float | None] = {}
    for node in inferred.graph.node:
        if node.op_type not in COUNTED_OP_TYPES:
            continue
        if node.op_type == "SelectiveScan":  # x (b, l, h, p), B (b, l, g, n)
            x, B = shapes.get(node.input[0]), shapes.get(node.input[3])
            flops[node.name] = None if x is None or B is None else SCAN_FLOPS_PER_STATE * math.prod(x) * B[-1]
            continue
        out, a, w = (shapes.get(name) for name in (node.output[0], node.input[0], node.input[1]))
        if out is None or a is None or w is None:
            flops[node.name] = None
        elif node.op_type == "MatMul":
            flops[node.name] = 2.0 * math.prod(out) * a[-1]
        elif node.op_type == "Gemm":
            trans_a = next((att.i for att in node.attribute if att.name == "transA"), 0)
            flops[node.name] = 2.0 * math.prod(out) * (a[0] if trans_a else a[-1])
        else:
            # w is (C_out, C_in / group, *kernel): grouping is already in its second dimension.
            flops[node.name] = 2.0 * math.prod(out) * w[1] * math.prod(w[2:])
    return flops


def node_transcendentals(model: onnx.ModelProto, batch: int = 1) -> dict[str, float | None]:
    """Node name -> values it evaluates a transcendental function of (its output's size), for every node of
    ``TRANSCENDENTAL_OP_TYPES``; None where its shape is unknown."""
    inferred, shapes = _inferred(model, batch)
    return {node.name: (None if (shape := shapes.get(node.output[0])) is None else float(math.prod(shape)))
            for node in inferred.graph.node if node.op_type in TRANSCENDENTAL_OP_TYPES}


def count_flops(model: onnx.ModelProto, batch: int = 1) -> dict[str, float]:
    """Totals of ``node_flops`` by op type, plus ``total`` and ``uncounted_nodes``."""
    ops = {n.name: n.op_type for n in model.graph.node}
    totals: dict[str, float] = {op: 0.0 for op in COUNTED_OP_TYPES} | {"uncounted_nodes": 0.0}
    for name, flops in node_flops(model, batch).items():
        if flops is None:
            totals["uncounted_nodes"] += 1
        else:
            totals[ops[name]] += flops
    totals["total"] = sum(totals[op] for op in COUNTED_OP_TYPES)
    return totals


def flop_share(model: onnx.ModelProto, nodes: set[str] | list[str], batch: int = 1) -> dict[str, float]:
    """FLOPs of ``nodes`` and their share of the model's counted FLOPs."""
    per_node = node_flops(model, batch)
    total = sum(f for f in per_node.values() if f is not None)
    kept = sum(f for name, f in per_node.items() if name in set(nodes) and f is not None)
    return {"pinned_flops": kept, "total_flops": total, "share": kept / total if total else 0.0}
