"""Export the detector to ONNX: ``model.onnx``, input ``eeg``, outputs ``logits`` then every other probe
(``GRAPH_OUTPUT_NAMES``).

The exporter is torch's dynamo exporter with the custom ops translated by ``brr.ops.registry``
(``standard``: only ai.onnx ops; ``plugin``: one custom node per op). Every probe is an output and
every probe feeds ``logits``, so there is one graph: the diff compares the stages of exactly the
graph that is served, and serving fetches ``logits`` alone (the other outputs cost a few MB a window).

Every node records the probe stage it computes (``brr.onnx.stages``: metadata ``brr.stage``, and the
map ``model.stages.json``). Export is deterministic: of the metadata torch leaves on a node, only its
module stack (paths and classes, ``brr.onnx.source``) is kept.
"""

from __future__ import annotations

import json
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx
import onnx_ir as ir
import torch
from onnx_ir.passes.common import RemoveUnusedNodesPass
from onnxscript import optimizer
from torch import nn

from brr.artifact.files import ONNX_FILE, STAGES_FILE
from brr.atomic import atomic_write_text
from brr.errors import CheckFailed
from brr.model import GRAPH_OUTPUT_NAMES, V3Detector
from brr.model.contract import INPUT_NAME, GraphPart
from brr.onnx.source import CLASS_HIERARCHY_KEY
from brr.onnx.stages import NAME_SCOPES_KEY, WRAPPED_MODULE, tag_stages
from brr.ops.registry import ONNX_OPSET, OPS_MODES, translation_table


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
        return self.directory / ONNX_FILE

    @property
    def stages(self) -> Path:
        return self.directory / STAGES_FILE


class _ProbedDetector(nn.Module):
    """The detector with every probe as an output, in ``GRAPH_OUTPUT_NAMES`` order (held as ``WRAPPED_MODULE``)."""

    def __init__(self, detector: V3Detector):
        super().__init__()
        setattr(self, WRAPPED_MODULE, detector)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        _, probes = getattr(self, WRAPPED_MODULE)(x, return_probes=True)
        return tuple(probes[name] for name in GRAPH_OUTPUT_NAMES)


def _drop_traced_metadata(model: ir.Model) -> None:
    """Keep only the module stack of every node's metadata (stack traces and FX nodes depend on the
    machine)."""
    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        for key in [k for k in node.metadata_props if k not in (NAME_SCOPES_KEY, CLASS_HIERARCHY_KEY)]:
            del node.metadata_props[key]


# Ops that only move or select elements: folding them yields the same bits an engine would compute.
_LAYOUT_OPS = frozenset({"Slice", "Transpose", "Reshape", "Squeeze", "Unsqueeze", "Concat", "Gather"})


def _fold_weight_views(model: ir.Model) -> None:
    """Fold every slice and transpose of a weight into an initializer.

    The exporter folds only tensors of up to 8192 elements, which leaves a Slice and a Transpose on every
    projection weight the model slices per consumer: a hundred nodes that every engine and every
    layer-by-layer diff would otherwise carry. Arithmetic on weights (weight norm) stays in the graph,
    so the engines keep computing it exactly as they did.
    """
    optimizer.fold_constants(model, should_fold=lambda node: True if node.op_type in _LAYOUT_OPS else None)
    RemoveUnusedNodesPass()(model)


def check_onnx(path: Path) -> None:
    """ONNX checker (full check) and strict shape inference; raises ExportError naming the file."""
    try:
        onnx.checker.check_model(str(path), full_check=True)
        onnx.shape_inference.infer_shapes_path(str(path), str(path) + ".inferred", strict_mode=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise ExportError(f"{path}: fails the ONNX checker / shape inference: {exc}") from exc
    finally:
        Path(str(path) + ".inferred").unlink(missing_ok=True)


class _quiet_exporter:
    """Silences what torch.onnx says on every export and no brr user can act on: one warning per
    torchvision op it cannot register (brr uses none) and a pytree deprecation inside torch."""

    REGISTRY_LOGGER = logging.getLogger("torch.onnx._internal.exporter._registration")

    def __enter__(self):
        self.level = self.REGISTRY_LOGGER.level
        self.REGISTRY_LOGGER.setLevel(logging.ERROR)
        self.warnings = warnings.catch_warnings()
        self.warnings.__enter__()
        warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
                                category=FutureWarning)

    def __exit__(self, *exc):
        self.warnings.__exit__(*exc)
        self.REGISTRY_LOGGER.setLevel(self.level)


def export_onnx(model: V3Detector, directory: str | Path, ops: str = "standard") -> OnnxExport:
    """Export ``model`` (eval mode, fp32) to ``directory``: model.onnx and model.stages.json."""
    if ops not in OPS_MODES:
        raise ValueError(f"ops mode must be one of {OPS_MODES}, got {ops!r}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    wrapper = _ProbedDetector(model.float().eval()).eval()
    example = torch.zeros(2, 19, model.config.window_samples)
    result = OnnxExport(directory, ops, ONNX_OPSET)
    stages = _export_graph(wrapper, example, INPUT_NAME, GRAPH_OUTPUT_NAMES, {0: torch.export.Dim("batch")},
                           result.model, ops)
    atomic_write_text(result.stages, json.dumps(stages, indent=1, sort_keys=True))
    return result


class _ProbedPart(nn.Module):
    """One part of the detector (``GraphPart``) with its probes as outputs, in ``part.graph_outputs`` order."""

    def __init__(self, detector: V3Detector, part: GraphPart):
        super().__init__()
        setattr(self, WRAPPED_MODULE, detector)
        self.part = part

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        detector = getattr(self, WRAPPED_MODULE)
        forward = detector.forward_front if self.part is GraphPart.FRONT else detector.forward_rest
        _, probes = forward(x, return_probes=True)
        return tuple(probes[name] for name in self.part.graph_outputs)


def export_split_onnx(model: V3Detector, directory: str | Path, ops: str = "standard") -> dict[GraphPart, Path]:
    """Export ``model``'s front and rest (``brr.model.front``) as two graphs into ``directory`` (``GraphPart.file``):
    the front over any number of samples (a chunk of a recording), the rest over whole windows' features."""
    if ops not in OPS_MODES:
        raise ValueError(f"ops mode must be one of {OPS_MODES}, got {ops!r}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model, cfg = model.float().eval(), model.config
    examples = {GraphPart.FRONT: torch.zeros(2, 19, cfg.window_samples),
                GraphPart.REST: torch.zeros(2, 19, cfg.steps, cfg.electrode_dim)}
    # A span shorter than the strided convolution's kernel has no step.
    dynamic = {GraphPart.FRONT: {0: torch.export.Dim("batch"), 2: torch.export.Dim("samples", min=cfg.downsample)},
               GraphPart.REST: {0: torch.export.Dim("batch")}}
    paths = {}
    for part in GraphPart:
        paths[part] = directory / part.file
        _export_graph(_ProbedPart(model, part).eval(), examples[part], part.input_name, part.graph_outputs,
                      dynamic[part], paths[part], ops)
    return paths


def _export_graph(wrapper: nn.Module, example: torch.Tensor, input_name: str, output_names: tuple[str, ...],
                  dynamic: dict[int, Any], path: Path, ops: str) -> dict[str, str]:
    """Export ``wrapper`` to ``path`` (``dynamic``: axis -> ``torch.export.Dim``), fold and tag it, check it;
    returns its stage map."""
    with torch.no_grad(), _quiet_exporter():
        program = torch.onnx.export(
            wrapper, (example,), dynamo=True, opset_version=ONNX_OPSET, optimize=True, verbose=False,
            input_names=[input_name], output_names=list(output_names), dynamic_shapes={"x": dynamic},
            custom_translation_table=translation_table(ops),
        )
    probed = program.model
    _fold_weight_views(probed)
    _drop_traced_metadata(probed)
    stages = tag_stages(probed)
    ir.save(probed, path)
    check_onnx(path)
    return stages
