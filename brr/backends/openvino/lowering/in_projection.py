"""A narrow block's ``Mamba2Scan`` with its norm takes in its input projection and becomes
``Mamba2ProjectedScan`` (why: the package docstring): where z, x, B, C and dt are MatMuls of one u
(mamba_ssm's in_proj, exported as five Linears) of at most ``PROJECTED_MAX_FEATURES`` features, the node
reads u and the five weights side by side, in_proj's order."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from brr.backends.openvino.lowering.matching import IN_PROJECTION, projection_of
from brr.backends.openvino.lowering.nodes import PROJECTED_SCAN, SCAN
from brr.backends.openvino.lowering.rewrite import Rewrite, Target, require
from brr.ops.selective_scan.lowered_inputs import Part

PROJECTED_MAX_FEATURES = 16
_KEPT_ATTRIBUTES = ("dt_softplus", "chunk_size", "norm_eps")
# The scan's inputs that the projected node reads as they are: A, D, dt_bias, the convolutions', the norm's
# weight.
_SHARED = tuple(name for name in PROJECTED_SCAN.inputs.names_of(Part.BLOCK) if name in SCAN.inputs.names)


def candidates(graph: ir.Graph, target: Target) -> list[ir.Node]:
    return [n for n in graph if SCAN.is_one(n) and SCAN.holds(n, Part.NORM)]


def apply(graph: ir.Graph, fused: ir.Node, target: Target) -> None:
    parts = [projection_of(SCAN.input(fused, name), through, name) for name, through in IN_PROJECTION]
    require(len({id(u) for u, _, _ in parts}) == 1, "z, x, B, C and dt project different inputs")
    u = parts[0][0]
    weights = [weight for _, weight, _ in parts]
    require(len(target.shapes.get(u.name, ())) == 3 and len({w.shape[0] for w in weights}) == 1,
            "the projected input is not (b, l, features)")
    require(weights[0].shape[0] <= PROJECTED_MAX_FEATURES,
            f"{weights[0].shape[0]} input features, more than {PROJECTED_MAX_FEATURES}: "
            "the engine's GEMMs project them")
    weight = ir.Value(name=f"{fused.name}/in_proj_weight",
                      const_value=ir.tensor(np.concatenate(weights, axis=1).astype(np.float32)))
    graph.register_initializer(weight)
    # B and C are Unsqueezes of their projections (IN_PROJECTION): one group.
    attributes = [*(fused.attributes[a] for a in _KEPT_ATTRIBUTES), ir.AttrInt64("groups", 1)]
    inputs = {"u": u, "in_proj_weight": weight} | {name: SCAN.input(fused, name) for name in _SHARED}
    projected = PROJECTED_SCAN.make(fused.name, inputs, attributes)
    graph.insert_before(fused, projected)
    output_name = fused.outputs[0].name
    fused.outputs[0].replace_all_uses_with(projected.outputs[0], replace_graph_outputs=True)
    graph.remove(fused, safe=True)
    graph.remove([node for _, _, nodes in parts for node in nodes], safe=True)
    projected.outputs[0].name = output_name


REWRITE = Rewrite("lowered_projections", candidates, apply, needs_extension=True)
