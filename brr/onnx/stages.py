"""Which probe stage each node of an exported detector computes: written once, read everywhere.

``torch.onnx.export(..., dynamo=True)`` records on every node the module path it was traced in
(metadata ``pkg.torch.onnx.name_scopes``, e.g. ``['', 'detector', 'detector.edge_stream',
'detector.edge_stream.lift']``); ``module_paths`` gives them relative to the detector. The top-level
module names the stage (``MODULE_STAGES``). The edge stream yields two probes: a node of it is an
``edge_weights`` node when it is in one of the weight submodules (``EDGE_WEIGHT_MODULES``) or computes
from one of their outputs, else ``edge_similarity``. A node traced outside every module (shape
arithmetic, folded constants) belongs to the first stage that uses it; one that feeds nothing staged
takes its producers' last stage, else the first stage.

``tag_stages`` writes the stage of every node (subgraph nodes inherit their parent's) as metadata
``brr.stage``; ``node_stages`` reads it back, and derives it by the same rule for nodes without one.
"""

from __future__ import annotations

import ast

import onnx
import onnx_ir as ir

from brr.model import PROBE_NAMES

STAGE_METADATA_KEY = "brr.stage"
NAME_SCOPES_KEY = "pkg.torch.onnx.name_scopes"
# The attribute under which the export's probe wrapper holds the detector.
WRAPPED_MODULE = "detector"
# Top-level submodule of V3Detector -> probe stage.
MODULE_STAGES = {
    "tcn": "tcn", "electrodes": "electrodes", "node_stream": "node_stream", "edge_stream": "edge_similarity",
    "adjacency": "adjacency", "positional_encoding": "laplacian_pe", "gnn": "gnn",
    "backprojection": "backprojection", "decoder": "decoder", "head": "logits",
}
EDGE_WEIGHT_MODULES = ("edge_stream.lift", "edge_stream.mamba", "edge_stream.project")


def module_paths(name_scopes: str | None) -> list[str]:
    """Module paths (outermost first) from a node's name-scopes metadata, relative to the detector:
    e.g. ['tcn', 'tcn.mix']; empty for nodes traced outside every module. The export's wrappers hold the
    detector as ``WRAPPED_MODULE``; a wrapper that calls one of its methods (a part's ``forward_rest``)
    records no scope of the detector itself, only its submodules', so each path is read by its prefix, and
    the scope after the last module (the traced op's own name) is dropped."""
    scopes = [s for s in (ast.literal_eval(name_scopes) if name_scopes else []) if s]
    prefix = WRAPPED_MODULE + "."
    if any(s == WRAPPED_MODULE or s.startswith(prefix) for s in scopes):
        return [s[len(prefix):] for s in scopes if s.startswith(prefix)]
    return scopes


def assign_stages(graph: ir.Graph) -> dict[str, str]:
    """Node name -> probe stage for every node of ``graph`` (its main graph)."""
    nodes = list(graph)
    stages: dict[str, str | None] = {}
    edge_weights: set[str] = set()  # names of the values the edge stream's weight part computes
    for node in nodes:
        paths = module_paths(node.metadata_props.get(NAME_SCOPES_KEY))
        stage = MODULE_STAGES.get(paths[0].split(".")[0]) if paths else None
        if stage == "edge_similarity" and (any(p.startswith(EDGE_WEIGHT_MODULES) for p in paths)
                                           or any(v is not None and v.name in edge_weights for v in node.inputs)):
            stage = "edge_weights"
            edge_weights.update(v.name for v in node.outputs)
        stages[node.name] = stage
    for node in reversed(nodes):
        if stages[node.name] is None:
            users = [u.name for out in node.outputs for u, _ in out.uses() if u.graph is graph]
            found = [stages[u] for u in users if stages.get(u)]
            stages[node.name] = min(found, key=PROBE_NAMES.index) if found else None
    for node in nodes:
        if stages[node.name] is None:
            producers = [v.producer() for v in node.inputs if v is not None and v.producer() is not None]
            found = [stages[p.name] for p in producers if stages.get(p.name)]
            stages[node.name] = max(found, key=PROBE_NAMES.index) if found else PROBE_NAMES[0]
    return stages  # type: ignore[return-value]


def tag_stages(model: ir.Model) -> dict[str, str]:
    """Write every node's stage as its ``brr.stage`` metadata; returns the main graph's stage map."""
    stages = assign_stages(model.graph)

    def tag(node: ir.Node, stage: str) -> None:
        node.metadata_props[STAGE_METADATA_KEY] = stage
        for attr in node.attributes.values():
            if attr.type == ir.AttributeType.GRAPH:
                for inner in attr.value:
                    tag(inner, stage)

    for node in model.graph:
        tag(node, stages[node.name])
    return stages


def tagged_stage(node: onnx.NodeProto) -> str | None:
    return next((prop.value for prop in node.metadata_props if prop.key == STAGE_METADATA_KEY), None)


def node_stages(model: onnx.ModelProto) -> dict[str, str]:
    """Node name -> probe stage for every top-level node: its tag, else derived as ``tag_stages`` would."""
    tags = {node.name: tagged_stage(node) for node in model.graph.node}
    if all(stage is not None for stage in tags.values()):
        return tags  # type: ignore[return-value]
    derived = assign_stages(ir.from_proto(model).graph)
    return {name: tag if tag is not None else derived[name] for name, tag in tags.items()}
