"""A bidirectional layer's directions are summed, not concatenated (why: the package docstring):
Concat(y_1 O_1, ..., y_k O_k) W along the features, W a constant, is y_1 (O_1 W_1) + ... + y_k (O_k W_k), W_i
the rows of W that read part i. Each part's projection (a MatMul, or a ``Mamba2ProjectedScan``'s own) absorbs
its rows of W, and Adds of the parts replace the Concat and the MatMul. Under a precision plan, the MatMul and
the parts' projections must all run in fp32 or none, so that no product changes precision."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from brr.backends.openvino.lowering.matching import constant, sole_user, users
from brr.backends.openvino.lowering.nodes import PROJECTED_SCAN
from brr.backends.openvino.lowering.rewrite import Rewrite, Target, require
from brr.ops.selective_scan.lowered_inputs import Part


def candidates(graph: ir.Graph, target: Target) -> list[ir.Node]:
    return [n for n in graph if n.op_type == "Concat"]


def _output_projection(value: ir.Value) -> tuple[ir.Node, int]:
    """(node, index of its constant 2-D weight) when ``value``, read once, is a MatMul's output or a projected
    scan's with its output projection."""
    node = value.producer()
    require(node is not None and not value.is_graph_output() and len(users(value)) == 1,
            f"part {value.name} is not a node's output read only there")
    if node.op_type == "MatMul" and node.domain == "":
        index = 1
    else:
        require(PROJECTED_SCAN.is_one(node) and PROJECTED_SCAN.holds(node, Part.OUT_PROJECTION),
                f"part {value.name} is no MatMul's output, nor a projected scan's with its output projection")
        index = PROJECTED_SCAN.inputs.index("out_proj_weight")
    weight = constant(node.inputs[index])
    require(weight is not None and weight.ndim == 2,
            f"part {value.name}'s projection weight is not a 2-D constant")
    return node, index


def apply(graph: ir.Graph, concat: ir.Node, target: Target) -> None:
    matmul = sole_user(concat.outputs[0], "MatMul")
    require(concat.domain == "" and concat.attributes.get_int("axis", 0) == -1,
            "not a Concat along the last axis")
    require(matmul is not None and matmul.inputs[0] is concat.outputs[0]
            and not matmul.outputs[0].is_graph_output(),
            "its output is not read only by a MatMul, as its first input")
    combining = constant(matmul.inputs[1])
    require(combining is not None and combining.ndim == 2, "the MatMul's weight is not a 2-D constant")
    parts = [_output_projection(value) for value in concat.inputs]
    require(len({id(node) for node, _ in parts}) == len(parts), "two parts come out of one node")
    widths = [constant(node.inputs[index]).shape[1] for node, index in parts]
    require(sum(widths) == combining.shape[0], "the parts' widths do not add up to the MatMul weight's rows")
    require(target.fp32_everywhere or len({node.name in target.fp32_nodes
                                           for node in (matmul, *(node for node, _ in parts))}) == 1,
            "the precision plan pins some of the MatMul and the parts' projections, not all")
    row = 0
    for (node, index), width in zip(parts, widths):
        own = constant(node.inputs[index]).astype(np.float64) @ combining[row:row + width].astype(np.float64)
        absorbed = ir.Value(name=f"{node.name}/absorbed_{matmul.name}_weight",
                            const_value=ir.tensor(own.astype(np.float32)))
        graph.register_initializer(absorbed)
        old = node.inputs[index]
        node.replace_input_with(index, absorbed)
        if not old.uses() and old.name in graph.initializers:
            graph.initializers.pop(old.name)
        row += width
    total = concat.inputs[0]
    added = []
    for i, value in enumerate(concat.inputs[1:]):
        add = ir.Node("", "Add", [total, value], name=f"{matmul.name}/sum_{i}", num_outputs=1)
        add.outputs[0].name = add.name
        added.append(add)
        total = add.outputs[0]
    for add in added:
        graph.insert_before(matmul, add)
    matmul.outputs[0].replace_all_uses_with(total)
    graph.remove([matmul, concat], safe=True)


REWRITE = Rewrite("summed_directions", candidates, apply, needs_extension=False)
