"""A ``Mamba2Scan`` takes in the gated RMS norm of its output (why: the package docstring): Reshape ->
g = y * SiLU(z) -> g * Reciprocal(Sqrt(ReduceMean(Pow(g, 2), -1) + eps)) * weight, the ``GatedRMSNorm`` of
``brr.model.mamba2`` as the exporter writes it, becomes the node's z and norm_weight inputs and its
norm_eps attribute; the Reshape stays, now after the normalised output. A norm whose values are read
elsewhere, or whose output is a graph output, stays in the graph."""

from __future__ import annotations

from dataclasses import dataclass

import onnx_ir as ir

from brr.backends.openvino.lowering.matching import constant, only_use, other_input, silu_of, sole_user, users
from brr.backends.openvino.lowering.nodes import SCAN
from brr.backends.openvino.lowering.rewrite import Rewrite, Target, require
from brr.ops.selective_scan.lowered_inputs import Part


@dataclass
class _GatedNorm:
    """z, the norm's weight and epsilon, the nodes from the scan's reshaped output to the normalised one."""
    z: ir.Value
    weight: ir.Value
    eps: float
    nodes: list[ir.Node]
    reshape: ir.Node


def candidates(graph: ir.Graph, target: Target) -> list[ir.Node]:
    return [n for n in graph if SCAN.is_one(n) and not SCAN.holds(n, Part.NORM)]


def _gated_norm(scan: ir.Node) -> _GatedNorm:
    reshape = sole_user(scan.outputs[0], "Reshape")
    gate = sole_user(reshape.outputs[0], "Mul") if reshape is not None else None
    require(gate is not None, "its output is not a Reshape read only by a Mul")
    silu = silu_of(other_input(gate, reshape.outputs[0]))
    require(silu is not None and only_use(silu[1][-1].outputs[0], gate), "its output is not gated by a SiLU")
    g = gate.outputs[0]
    readers = {n.op_type: n for n in users(g)}
    require(len(users(g)) == 2 and set(readers) == {"Pow", "Mul"},
            "the gated output is not read by a Pow and a Mul")
    power, scale = readers["Pow"], readers["Mul"]
    mean = sole_user(power.outputs[0], "ReduceMean") if constant(power.inputs[1]) == 2 else None
    add = sole_user(mean.outputs[0], "Add") if mean is not None else None
    axes = constant(mean.inputs[1]) if mean is not None and len(mean.inputs) == 2 else None
    require(mean is not None and add is not None and mean.attributes.get_int("keepdims", 1) == 1
            and axes is not None and list(axes) in ([-1], [2]),
            "no square -> mean over the last axis (kept) -> Add of the gated output")
    eps = constant(other_input(add, mean.outputs[0]))
    sqrt = sole_user(add.outputs[0], "Sqrt")
    reciprocal = sole_user(sqrt.outputs[0], "Reciprocal") if sqrt is not None else None
    require(eps is not None and eps.size == 1 and reciprocal is not None
            and sole_user(reciprocal.outputs[0], "Mul") is scale,
            "no constant epsilon -> Sqrt -> Reciprocal -> the Mul by the gated output")
    weighting = sole_user(scale.outputs[0], "Mul")
    weight = other_input(weighting, scale.outputs[0]) if weighting is not None else None
    require(weight is not None and constant(weight) is not None and constant(weight).ndim == 1,
            "the normalised output is not weighted by a 1-D constant")
    require(not weighting.outputs[0].is_graph_output(),
            "its output is a graph output, whose name OpenVINO keeps")
    return _GatedNorm(silu[0], weight, float(eps.reshape(())),
                      [*silu[1], gate, power, mean, add, sqrt, reciprocal, scale, weighting], reshape)


def apply(graph: ir.Graph, scan: ir.Node, target: Target) -> None:
    norm = _gated_norm(scan)
    SCAN.extend(scan, {"z": norm.z, "norm_weight": norm.weight})
    scan.attributes["norm_eps"] = ir.AttrFloat32("norm_eps", norm.eps)
    norm.nodes[-1].outputs[0].replace_all_uses_with(norm.reshape.outputs[0], replace_graph_outputs=True)
    graph.remove(list(reversed(norm.nodes)), safe=True)


REWRITE = Rewrite("lowered_gated_norms", candidates, apply, needs_extension=True)
