"""A ``Mamba2ProjectedScan`` takes in the output projection that follows it, Reshape(b, l, h p) -> MatMul by a
constant weight, when both are read only there (why: the package docstring): the node then outputs the
MatMul's value, under its name."""

from __future__ import annotations

import onnx_ir as ir

from brr.backends.openvino.lowering.matching import constant, sole_user
from brr.backends.openvino.lowering.nodes import PROJECTED_SCAN
from brr.backends.openvino.lowering.rewrite import Rewrite, Target, require
from brr.ops.selective_scan.lowered_inputs import Part


def candidates(graph: ir.Graph, target: Target) -> list[ir.Node]:
    return [n for n in graph if PROJECTED_SCAN.is_one(n) and not PROJECTED_SCAN.holds(n, Part.OUT_PROJECTION)]


def apply(graph: ir.Graph, projected: ir.Node, target: Target) -> None:
    reshape = sole_user(projected.outputs[0], "Reshape")
    matmul = sole_user(reshape.outputs[0], "MatMul") if reshape is not None else None
    require(matmul is not None and matmul.inputs[0] is reshape.outputs[0],
            "its output is not a Reshape read only by a MatMul")
    require(not matmul.outputs[0].is_graph_output(), "the MatMul's output is a graph output")
    weight = constant(matmul.inputs[1])
    require(weight is not None and weight.ndim == 2, "the MatMul's weight is not a 2-D constant")
    PROJECTED_SCAN.extend(projected, {"out_proj_weight": matmul.inputs[1]})
    matmul.outputs[0].replace_all_uses_with(projected.outputs[0])
    output_name = matmul.outputs[0].name
    graph.remove([matmul, reshape], safe=True)
    projected.outputs[0].name = output_name


REWRITE = Rewrite("lowered_out_projections", candidates, apply, needs_extension=True)
