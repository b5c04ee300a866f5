"""A backward direction, flip(block(flip(u))) along l, runs backwards in the kernel (why: the package
docstring): the flip of u into a lowered scan with its norm (into its input projections, for a ``Mamba2Scan``)
and the flip of its output back (after per-step nodes: the output projection) go, and the node gets the
attribute ``reversed``. Either flip read elsewhere (a probe) keeps both."""

from __future__ import annotations

import onnx_ir as ir

from brr.backends.openvino.lowering.matching import (
    IN_PROJECTION,
    is_per_step,
    is_time_flip,
    projection_of,
    users,
)
from brr.backends.openvino.lowering.nodes import PROJECTED_SCAN, SCAN
from brr.backends.openvino.lowering.rewrite import Declined, Rewrite, Target, require
from brr.ops.selective_scan.lowered_inputs import Part


def candidates(graph: ir.Graph, target: Target) -> list[ir.Node]:
    return [n for n in graph if PROJECTED_SCAN.is_one(n) or (SCAN.is_one(n) and SCAN.holds(n, Part.NORM))]


def _flip_after(value: ir.Value, shapes: dict[str, tuple[int | None, ...]]) -> ir.Node:
    """The time flip ``value`` reaches through per-step nodes, each value on the way read only by the next."""
    while len(readers := users(value)) == 1:
        node = readers[0]
        if is_time_flip(node) and node.inputs[0] is value:
            require(not node.outputs[0].is_graph_output(), "the flip of its output is a graph output")
            return node
        require(is_per_step(node, shapes) and node.inputs[0] is value,
                f"{node.name} ({node.op_type}) between it and a flip does not act on each step alone")
        value = node.outputs[0]
    raise Declined("its output, or a per-step node's after it, is not read by one node: no flip back")


def _flip_into(scan: ir.Node, shapes: dict[str, tuple[int | None, ...]]
               ) -> tuple[ir.Node, list[tuple[ir.Node, int]]]:
    """(the flip of u, its readers with the index of the input they read it at)."""
    if PROJECTED_SCAN.is_one(scan):
        u = PROJECTED_SCAN.input(scan, "u")
        into = u.producer()
        require(is_time_flip(into) and len(users(u)) == 1, "its u is not a flip read only there")
        return into, [(scan, PROJECTED_SCAN.inputs.index("u"))]
    # z, x, B, C and dt: per-step projections of one flip(u) along l that nothing else reads.
    parts = [projection_of(SCAN.input(scan, name), through, name) for name, through in IN_PROJECTION]
    require(all(is_per_step(n, shapes) for _, _, nodes in parts for n in nodes),
            "its input projections do not act on each step alone")
    matmuls = [nodes[-1] for _, _, nodes in parts]
    into = matmuls[0].inputs[0].producer()
    require(is_time_flip(into) and {id(n) for n in users(into.outputs[0])} == {id(m) for m in matmuls},
            "its input projections do not read one flip read only by them")
    return into, [(matmul, 0) for matmul in matmuls]


def apply(graph: ir.Graph, scan: ir.Node, target: Target) -> None:
    back = _flip_after(scan.outputs[0], target.shapes)
    into, readers = _flip_into(scan, target.shapes)
    for reader, index in readers:
        reader.replace_input_with(index, into.inputs[0])
    scan.attributes["reversed"] = ir.AttrInt64("reversed", 1)
    back.outputs[0].replace_all_uses_with(back.inputs[0])
    graph.remove([back, into], safe=True)


REWRITE = Rewrite("reversed_scans", candidates, apply, needs_extension=True)
