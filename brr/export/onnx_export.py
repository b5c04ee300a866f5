"""Export the detector to ONNX: ``model.onnx``, input ``eeg``, outputs every probe of ``PROBE_NAMES``.

The exporter is torch's dynamo exporter with the custom ops translated by ``brr.ops.registry``
(``standard``: only ai.onnx ops; ``plugin``: one custom node per op). Every probe is an output and
every probe feeds ``logits``, so there is one graph: the diff compares the stages of exactly the
graph that is served, and serving fetches ``logits`` alone (the other outputs cost a few MB a window).

Every node records the probe stage it computes (metadata prop ``brr.stage``, and the map
``model.stages.json``), read from the module path the exporter leaves in each node's name scopes.
Export is deterministic: bulky, machine-dependent metadata (stack traces, FX nodes) is dropped.
"""

from __future__ import annotations

import ast
import json
from dataclasses import dataclass
from pathlib import Path

import onnx
import onnx_ir as ir
import torch
from torch import nn

from brr.atomic import atomic_write_text
from brr.errors import CheckFailed
from brr.model import PROBE_NAMES, V3Detector
from brr.model.detector import INPUT_NAME
from brr.ops.registry import ONNX_OPSET, OPS_MODES, translation_table

MODEL_FILE = "model.onnx"
STAGES_FILE = "model.stages.json"
STAGE_METADATA_KEY = "brr.stage"
NAME_SCOPES_KEY = "pkg.torch.onnx.name_scopes"

# Top-level submodule of V3Detector -> probe stage. The edge stream yields two probes; see _edge_stage.
MODULE_STAGES = {
    "tcn": "tcn", "electrodes": "electrodes", "node_stream": "node_stream", "edge_stream": "edge_weights",
    "adjacency": "adjacency", "positional_encoding": "laplacian_pe", "gnn": "gnn",
    "backprojection": "backprojection", "decoder": "decoder", "head": "logits",
}
# The wrapper attribute that holds the detector in the probed export; stripped from module paths.
WRAPPED_MODULE = "detector"


class ExportError(CheckFailed):
    """The exported graph failed a check; the message names the file and the check."""


@dataclass(frozen=True)
class OnnxExport:
    """The files of one export, in ``directory``."""

    directory: Path
    ops: str
    opset: int

    @property
    def model(self) -> Path:
        return self.directory / MODEL_FILE

    @property
    def stages(self) -> Path:
        return self.directory / STAGES_FILE


class _ProbedDetector(nn.Module):
    """The detector with every probe as an output, in ``PROBE_NAMES`` order."""

    def __init__(self, detector: V3Detector):
        super().__init__()
        self.detector = detector

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        _, probes = self.detector(x, return_probes=True)
        return tuple(probes[name] for name in PROBE_NAMES)


def module_paths(name_scopes: str | None) -> list[str]:
    """Module paths (outermost first) from a node's name-scopes metadata, relative to the detector:
    e.g. ['tcn', 'tcn.mix']; empty for nodes traced outside the probe wrapper's detector."""
    scopes = ast.literal_eval(name_scopes) if name_scopes else []
    return [s[len(WRAPPED_MODULE) + 1:] for s in scopes if s.startswith(f"{WRAPPED_MODULE}.")]


def _assign_stages(graph: ir.Graph) -> dict[str, str]:
    """Node name -> probe stage for the main graph's nodes (subgraph nodes inherit their parent's)."""
    nodes = list(graph)
    stages: dict[str, str | None] = {}
    edge_lift_seen = False
    for node in nodes:
        paths = module_paths(node.metadata_props.get(NAME_SCOPES_KEY))
        top = paths[0].split(".")[0] if paths else None
        stage = MODULE_STAGES.get(top)
        if top == "edge_stream":
            # Nodes of the edge stream before its lift compute the similarity (they are not in a submodule).
            edge_lift_seen = edge_lift_seen or any(p.startswith("edge_stream.lift") for p in paths)
            stage = "edge_weights" if edge_lift_seen else "edge_similarity"
        stages[node.name] = stage
    # Nodes without a module (shape arithmetic, folded constants) belong to the first stage that uses them.
    for node in reversed(nodes):
        if stages[node.name] is None:
            users = [u.name for out in node.outputs for u, _ in out.uses() if u.graph is graph]
            found = [stages[u] for u in users if stages.get(u)]
            stages[node.name] = min(found, key=PROBE_NAMES.index) if found else None
    for node in nodes:  # a node feeding nothing staged (e.g. feeding only an output) takes its producer's
        if stages[node.name] is None:
            producers = [v.producer() for v in node.inputs if v is not None and v.producer() is not None]
            found = [stages[p.name] for p in producers if stages.get(p.name)]
            stages[node.name] = max(found, key=PROBE_NAMES.index) if found else PROBE_NAMES[0]
    return stages  # type: ignore[return-value]


def _annotate(model: ir.Model) -> dict[str, str]:
    """Tag every node with its stage, drop machine-dependent metadata; returns the stage map."""
    stages = _assign_stages(model.graph)

    def tag(node: ir.Node, stage: str) -> None:
        for key in [k for k in node.metadata_props if k != NAME_SCOPES_KEY]:
            del node.metadata_props[key]
        node.metadata_props[STAGE_METADATA_KEY] = stage
        for attr in node.attributes.values():
            if attr.type == ir.AttributeType.GRAPH:
                for inner in attr.value:
                    tag(inner, stage)

    for node in model.graph:
        tag(node, stages[node.name])
    return stages


def check_onnx(path: Path) -> None:
    """ONNX checker (full check) and strict shape inference; raises ExportError naming the file."""
    try:
        onnx.checker.check_model(str(path), full_check=True)
        onnx.shape_inference.infer_shapes_path(str(path), str(path) + ".inferred", strict_mode=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise ExportError(f"{path}: fails the ONNX checker / shape inference: {exc}") from exc
    finally:
        Path(str(path) + ".inferred").unlink(missing_ok=True)


def export_onnx(model: V3Detector, directory: str | Path, ops: str = "standard") -> OnnxExport:
    """Export ``model`` (eval mode, fp32) to ``directory``: model.onnx and model.stages.json."""
    if ops not in OPS_MODES:
        raise ValueError(f"ops mode must be one of {OPS_MODES}, got {ops!r}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    wrapper = _ProbedDetector(model.float().eval()).eval()
    example = torch.zeros(2, 19, model.config.window_samples)
    with torch.no_grad():
        program = torch.onnx.export(
            wrapper, (example,), dynamo=True, opset_version=ONNX_OPSET, optimize=True, verbose=False,
            input_names=[INPUT_NAME], output_names=list(PROBE_NAMES),
            dynamic_shapes={"x": {0: torch.export.Dim("batch")}},
            custom_translation_table=translation_table(ops),
        )
    probed = program.model
    stages = _annotate(probed)
    result = OnnxExport(directory, ops, ONNX_OPSET)
    ir.save(probed, result.model)
    atomic_write_text(result.stages, json.dumps(stages, indent=1, sort_keys=True))
    check_onnx(result.model)
    return result
