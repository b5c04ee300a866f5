"""A ``Mamba2ProjectedScan`` whose u is a scalar s lifted by a constant (1, features) w (the edge stream's
first layer) reads s and projects it by w's product with its input projection (why: the package docstring).
The fold holds where the lift is linear: u = s w, or Clip(s w) whose clamp provably never binds (a Clip of s
above it bounds |s|, and that bound times max |w| sits inside the lift's clamp)."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from brr.backends.openvino.lowering.matching import constant
from brr.backends.openvino.lowering.nodes import PROJECTED_SCAN
from brr.backends.openvino.lowering.rewrite import Rewrite, Target, require

# Nodes whose output holds only values of their first input: a bound on its magnitude bounds theirs.
_VALUE_PRESERVING = ("Reshape", "Transpose", "Gather", "Squeeze", "Unsqueeze", "Identity", "Flatten")


def candidates(graph: ir.Graph, target: Target) -> list[ir.Node]:
    return [n for n in graph if PROJECTED_SCAN.is_one(n)]


def _magnitude_bound(value: ir.Value) -> float | None:
    """A bound on |value| proven by a Clip between constants above it, through value-preserving nodes; None
    when there is none. (A NaN is bounded by nothing: it passes both Clips alike.)"""
    node = value.producer()
    while node is not None and node.domain == "" and node.op_type in _VALUE_PRESERVING:
        node = node.inputs[0].producer()
    if node is None or node.op_type != "Clip" or node.domain != "" or len(node.inputs) != 3:
        return None
    low, high = constant(node.inputs[1]), constant(node.inputs[2])
    return None if low is None or high is None else float(max(abs(low), abs(high)))


def _lift_of(u: ir.Value, shapes: dict[str, tuple[int | None, ...]]) -> tuple[ir.Value, np.ndarray]:
    """(s, w) when u = s w, or Clip(s w) that provably never clips: s (b, l, 1), w a constant
    (1, features)."""
    clip = u.producer()
    lifted = clip.inputs[0] if clip is not None and clip.op_type == "Clip" and clip.domain == "" else u
    matmul = lifted.producer()
    require(matmul is not None and matmul.op_type == "MatMul" and matmul.domain == "",
            "its u is not a MatMul's output, clipped or not")
    source, w = matmul.inputs[0], constant(matmul.inputs[1])
    require(w is not None and w.ndim == 2 and w.shape[0] == 1 and shapes.get(source.name, (None,))[-1] == 1,
            "its u is not a (b, l, 1) tensor times a constant (1, features)")
    if lifted is not u:
        low = constant(clip.inputs[1]) if len(clip.inputs) > 1 and clip.inputs[1] is not None else None
        high = constant(clip.inputs[2]) if len(clip.inputs) > 2 and clip.inputs[2] is not None else None
        bound = _magnitude_bound(source)
        # |s w_k| <= bound max|w| must sit inside [low, high] with room for fp32 rounding.
        reach = None if bound is None else bound * float(np.abs(w).max()) * (1 + 2.0 ** -16)
        require(reach is not None and low is not None and high is not None
                and reach <= min(-float(low), float(high)), "the lift's clamp may bind")
    return source, w


def apply(graph: ir.Graph, projected: ir.Node, target: Target) -> None:
    source, w = _lift_of(PROJECTED_SCAN.input(projected, "u"), target.shapes)
    weight = PROJECTED_SCAN.input(projected, "in_proj_weight")
    folded = ir.Value(name=f"{projected.name}/lifted_in_proj_weight",
                      const_value=ir.tensor((w.astype(np.float64) @ constant(weight).astype(np.float64))
                                            .astype(np.float32)))
    graph.register_initializer(folded)
    projected.replace_input_with(PROJECTED_SCAN.inputs.index("u"), source)
    projected.replace_input_with(PROJECTED_SCAN.inputs.index("in_proj_weight"), folded)
    if not weight.uses():
        graph.initializers.pop(weight.name)


REWRITE = Rewrite("folded_lifts", candidates, apply, needs_extension=True)
