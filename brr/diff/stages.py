"""Which probe stage each ONNX node of an exported detector belongs to.

``brr-export`` tags every node with its stage (metadata ``brr.stage``, ``brr.export.onnx_export``,
which knows the probe wrapper it exports through): that tag wins. For graphs without it (a detector
module exported directly) the stage is read from the module path:
``torch.onnx.export(..., dynamo=True)`` records on every node the module path it was traced in
(metadata ``pkg.torch.onnx.name_scopes``, e.g. ``['', 'edge_stream', 'edge_stream.lift', ...]``);
the top-level module names the stage. The edge stream yields two probes: ``edge_similarity`` up to
the lift and ``edge_weights`` from it on, so inside ``edge_stream`` a node is an edge-weight node when
it is in one of the weight submodules or computes from one of their outputs.
"""

from __future__ import annotations

import ast

import onnx

from brr.export.onnx_export import STAGE_METADATA_KEY

NAME_SCOPES_KEY = "pkg.torch.onnx.name_scopes"

# V3Detector attribute -> probe name (brr.model.detector.PROBE_NAMES).
STAGE_OF_MODULE: dict[str, str] = {
    "tcn": "tcn",
    "electrodes": "electrodes",
    "node_stream": "node_stream",
    "edge_stream": "edge_similarity",
    "adjacency": "adjacency",
    "positional_encoding": "laplacian_pe",
    "gnn": "gnn",
    "backprojection": "backprojection",
    "decoder": "decoder",
    "head": "logits",
}
EDGE_WEIGHT_SCOPES = ("edge_stream.lift", "edge_stream.mamba", "edge_stream.project")


def tagged_stage(node: onnx.NodeProto) -> str | None:
    return next((prop.value for prop in node.metadata_props if prop.key == STAGE_METADATA_KEY), None)


def name_scopes(node: onnx.NodeProto) -> list[str]:
    for prop in node.metadata_props:
        if prop.key == NAME_SCOPES_KEY:
            return ast.literal_eval(prop.value)
    return []


def node_stages(model: onnx.ModelProto) -> dict[str, str | None]:
    """Node name -> probe stage for every top-level node (None where the export recorded no module)."""
    stages: dict[str, str | None] = {}
    edge_weight_tensors: set[str] = set()
    for node in model.graph.node:
        if (tagged := tagged_stage(node)) is not None:
            stages[node.name] = tagged
            continue
        scopes = name_scopes(node)
        stage = STAGE_OF_MODULE.get(scopes[1]) if len(scopes) > 1 else None
        if stage == "edge_similarity" and (
            any(s.startswith(EDGE_WEIGHT_SCOPES) for s in scopes) or edge_weight_tensors.intersection(node.input)
        ):
            stage = "edge_weights"
            edge_weight_tensors.update(node.output)
        stages[node.name] = stage
    return stages
