"""Questions the rewrites ask of an exported graph: who reads a value, what constant it holds, and the small
patterns that several rewrites look for (SiLU, a time flip, a per-step node, an input projection)."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir

from brr.backends.openvino.lowering.rewrite import require

# mamba_ssm's in_proj order, z, x, B, C, dt: each the output of one MatMul of u (exported as five Linears), x
# through a Reshape to (b, l, h, p), B and C each through an Unsqueeze of the group axis (one group).
IN_PROJECTION = (("z", None), ("x", "Reshape"), ("B", "Unsqueeze"), ("C", "Unsqueeze"), ("dt", None))


def static_shapes(model: onnx.ModelProto) -> dict[str, tuple[int | None, ...]]:
    """Shape inference's shapes of ``model``'s values (None for a dimension it left symbolic), read only:
    the lowered graph is built from ``model`` itself, so no inferred shape goes stale when a node changes."""
    graph = onnx.shape_inference.infer_shapes(model).graph
    return {v.name: tuple(d.dim_value if d.HasField("dim_value") else None
                          for d in v.type.tensor_type.shape.dim)
            for v in [*graph.input, *graph.value_info] if v.type.tensor_type.HasField("shape")}


def only_use(value: ir.Value, node: ir.Node) -> bool:
    return not value.is_graph_output() and {id(u.node) for u in value.uses()} == {id(node)}


def users(value: ir.Value) -> list[ir.Node]:
    """The nodes that read ``value``, each once; none for a graph output, which must keep its value."""
    return [] if value.is_graph_output() else list({id(u.node): u.node for u in value.uses()}.values())


def sole_user(value: ir.Value, op_type: str) -> ir.Node | None:
    readers = users(value)
    sole = len(readers) == 1 and readers[0].op_type == op_type and readers[0].domain == ""
    return readers[0] if sole else None


def other_input(node: ir.Node, value: ir.Value) -> ir.Value | None:
    others = [v for v in node.inputs if v is not value]
    return others[0] if len(node.inputs) == 2 and len(others) == 1 else None


def constant(value: ir.Value | None) -> np.ndarray | None:
    return None if value is None or value.const_value is None else value.const_value.numpy()


def silu_of(value: ir.Value | None) -> tuple[ir.Value, list[ir.Node]] | None:
    """(z, its nodes) when ``value`` is z * Sigmoid(z) read once."""
    mul = value.producer() if value is not None else None
    if mul is None or mul.op_type != "Mul" or len(mul.inputs) != 2:
        return None
    for z, sig in (mul.inputs, reversed(mul.inputs)):
        sigmoid = sig.producer()
        if (sigmoid is not None and sigmoid.op_type == "Sigmoid" and sigmoid.inputs[0] is z
                and only_use(sig, mul)):
            return z, [sigmoid, mul]
    return None


def is_swap_of_last_two(node: ir.Node | None) -> bool:
    return (node is not None and node.op_type == "Transpose" and node.domain == ""
            and list(node.attributes.get_ints("perm", [])) == [0, 2, 1])


def is_time_flip(node: ir.Node | None) -> bool:
    """Slice(starts -1, ends -inf, axes 1, steps -1): the exporter's torch.flip of (b, l, features) along
    l."""
    if node is None or node.op_type != "Slice" or node.domain != "" or len(node.inputs) != 5:
        return False
    starts, ends, axes, steps = (constant(v) for v in node.inputs[1:])
    return (all(c is not None and c.size == 1 for c in (starts, ends, axes, steps)) and int(starts[0]) == -1
            and int(ends[0]) <= np.iinfo(np.int32).min and int(axes[0]) == 1 and int(steps[0]) == -1)


def is_per_step(node: ir.Node, shapes: dict[str, tuple[int | None, ...]]) -> bool:
    """A node that maps each step of a (b, l, ...) tensor on its own, so that it commutes with a flip along l:
    MatMul by a constant 2-D weight, Unsqueeze after the first two axes, Reshape of the axes after them."""
    if node.domain != "":
        return False
    if node.op_type == "MatMul":
        weight = constant(node.inputs[1])
        return weight is not None and weight.ndim == 2
    if node.op_type == "Unsqueeze":
        axes = constant(node.inputs[1]) if len(node.inputs) == 2 else None
        return axes is not None and bool((axes >= 2).all())
    if node.op_type == "Reshape":
        source, target = shapes.get(node.inputs[0].name), shapes.get(node.outputs[0].name)
        # l kept and the values per step kept (then so is b, symbolic or not): only the axes after l regroup.
        return (source is not None and target is not None and min(len(source), len(target)) >= 3
                and None not in (*source[1:], *target[1:]) and source[1] == target[1]
                and np.prod(source[2:]) == np.prod(target[2:]))
    return False


def projection_of(value: ir.Value | None, through: str | None, name: str
                  ) -> tuple[ir.Value, np.ndarray, list[ir.Node]]:
    """(u, weight, nodes) when ``value`` (the input ``name`` of a scan) is MatMul(u, constant 2-D weight),
    through one ``through`` node (Reshape, Unsqueeze) when given, each output read once; else Declined."""
    nodes = []
    if through is not None:
        node = value.producer() if value is not None else None
        require(node is not None and node.op_type == through and node.domain == "" and len(users(value)) == 1,
                f"{name} is not a {through} read only there")
        nodes.append(node)
        value = node.inputs[0]
    matmul = value.producer() if value is not None else None
    require(matmul is not None and matmul.op_type == "MatMul" and matmul.domain == ""
            and len(users(value)) == 1, f"{name} is not a MatMul's output read only there")
    weight = constant(matmul.inputs[1])
    require(weight is not None and weight.ndim == 2, f"{name}'s MatMul weight is not a 2-D constant")
    return matmul.inputs[0], weight, [*nodes, matmul]
