"""What a built TensorRT engine runs, read from its engine inspector, and whether the precision plan holds there.

An engine built with ``ProfilingVerbosity.DETAILED`` describes itself as JSON
(``IEngineInspector.get_engine_information``): every layer with its name, its type, the ONNX nodes it
implements (``Metadata``: ``[ONNX Layer: <node>]`` entries separated by U+001E; a fused layer's name also
joins its nodes with `` + ``) and its input and output tensors. The two schemas differ:

- TensorRT 10.x: a tensor's layout and type are one string (``"Format/Datatype": "Row major linear FP16
  format"``) and the engine's I/O tensors are a list of names (``"Bindings"``).
- TensorRT 11.x: the string is split (``"Format"`` and ``"Datatype"``), and ``"I/O Tensors"`` replaces
  ``"Bindings"`` with one object per tensor (``Name``, ``IOMode``, ``DataType``, ...).

``parse_engine_information`` reads both into ``EngineInformation``. A strongly typed engine computes in
the types of its graph, so ``plan_violations`` can check the plan on the engine itself: a node the plan
keeps in fp32 must meet no reduced-precision tensor among its own inputs and outputs (a tensor named as
in the graph; a Cast fused into the node's kernel brings another name, the stored one, which may be
reduced), and an fp32 engine must hold no reduced-precision tensor at all. Tensors inside a fused kernel
are not described; what the inspector shows is what is checked.
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from enum import Enum

import onnx

from brr.backends.base import EngineBuildError

# TensorRT records the ONNX node(s) a layer came from in its metadata as "[ONNX Layer: <name>]".
_ONNX_LAYER = re.compile(r"\[ONNX Layer: ([^\]]+)\]")
_FUSED = " + "


class TensorType(Enum):
    """A tensor's element type as the engine stores it."""

    FP32 = "fp32"
    FP16 = "fp16"
    BF16 = "bf16"
    FP8 = "fp8"
    FP4 = "fp4"
    INT8 = "int8"
    INT4 = "int4"
    UINT8 = "uint8"
    INT32 = "int32"
    INT64 = "int64"
    BOOL = "bool"
    UNKNOWN = "unknown"


REDUCED_TYPES = frozenset({TensorType.FP16, TensorType.BF16, TensorType.FP8, TensorType.FP4, TensorType.INT8,
                           TensorType.INT4})
# The words TensorRT writes for a type, in a format string ("Row major linear FP16 format") or alone
# ("Half", "Float", "BFloat16"; "kHALF" in some builds).
_TYPE_WORDS = {
    "FP32": TensorType.FP32, "FLOAT": TensorType.FP32, "FLOAT32": TensorType.FP32,
    "FP16": TensorType.FP16, "HALF": TensorType.FP16, "FLOAT16": TensorType.FP16,
    "BF16": TensorType.BF16, "BFLOAT16": TensorType.BF16,
    "FP8": TensorType.FP8, "FLOAT8": TensorType.FP8, "E4M3": TensorType.FP8, "FLOAT8E4M3": TensorType.FP8,
    "FP4": TensorType.FP4, "E2M1": TensorType.FP4, "FLOAT4": TensorType.FP4,
    "INT8": TensorType.INT8, "INT4": TensorType.INT4, "UINT8": TensorType.UINT8,
    "INT32": TensorType.INT32, "INT64": TensorType.INT64, "BOOL": TensorType.BOOL,
}


def tensor_type(text: str) -> TensorType:
    """The type a TensorRT type or "Format/Datatype" string names (the first type word in it)."""
    for word in re.findall(r"[A-Za-z0-9]+", text.upper()):
        found = _TYPE_WORDS.get(word) or (_TYPE_WORDS.get(word[1:]) if word.startswith("K") else None)
        if found is not None:
            return found
    return TensorType.UNKNOWN


def layer_nodes(name: str, metadata: str | None) -> frozenset[str]:
    """The ONNX nodes a layer implements: its name (each part of a fused one), and those its metadata names."""
    return frozenset({name, *name.split(_FUSED), *_ONNX_LAYER.findall(metadata or "")})


@dataclass(frozen=True)
class EngineTensor:
    name: str
    type: TensorType
    io_mode: str = ""  # "Input"/"Output" for the engine's I/O tensors in TensorRT 11's schema


@dataclass(frozen=True)
class EngineLayer:
    name: str
    layer_type: str
    nodes: frozenset[str]
    inputs: tuple[EngineTensor, ...]
    outputs: tuple[EngineTensor, ...]

    @property
    def tensors(self) -> tuple[EngineTensor, ...]:
        return self.inputs + self.outputs


@dataclass(frozen=True)
class EngineInformation:
    """The engine's layers and I/O tensors; ``schema`` is the TensorRT major whose JSON was read (10 or 11)."""

    layers: tuple[EngineLayer, ...]
    io_tensors: tuple[EngineTensor, ...]
    schema: int

    def outputs(self, inputs: Collection[str]) -> list[str]:
        """The engine's output tensors (10.x lists I/O names only: those that are not ``inputs``)."""
        if self.schema >= 11:
            return [t.name for t in self.io_tensors if t.io_mode == "Output"]
        return [t.name for t in self.io_tensors if t.name not in inputs]

    def nodes(self) -> frozenset[str]:
        return frozenset().union(*(layer.nodes for layer in self.layers))


def _layer_tensor(entry: Mapping) -> EngineTensor:
    # 10.x: "Format/Datatype"; 11.x: "Datatype" (spelt "DataType" where the I/O tensors are described).
    text = entry.get("Format/Datatype") or entry.get("Datatype") or entry.get("DataType") or ""
    return EngineTensor(str(entry["Name"]), tensor_type(str(text)))


def parse_engine_information(document: str | Mapping) -> EngineInformation:
    """``IEngineInspector.get_engine_information(LayerInformationFormat.JSON)``, TensorRT 10.x or 11.x."""
    if isinstance(document, str):
        document = json.loads(document)
    layers = document.get("Layers")
    if not isinstance(layers, list):
        raise EngineBuildError("the engine inspector's JSON has no list of layers")
    parsed = []
    for layer in layers:
        if not isinstance(layer, Mapping):
            raise EngineBuildError("the engine inspector names its layers only: the engine was not built with "
                                   "ProfilingVerbosity.DETAILED, so what it runs cannot be checked")
        name = str(layer.get("Name", ""))
        parsed.append(EngineLayer(name, str(layer.get("LayerType", "")), layer_nodes(name, layer.get("Metadata")),
                                  tuple(map(_layer_tensor, layer.get("Inputs") or [])),
                                  tuple(map(_layer_tensor, layer.get("Outputs") or []))))
    if "I/O Tensors" in document:
        io = tuple(EngineTensor(str(t["Name"]), tensor_type(str(t.get("DataType") or t.get("Datatype") or "")),
                                str(t.get("IOMode", ""))) for t in document["I/O Tensors"])
        return EngineInformation(tuple(parsed), io, 11)
    io = tuple(EngineTensor(str(name), TensorType.UNKNOWN) for name in document.get("Bindings") or [])
    return EngineInformation(tuple(parsed), io, 10)


@dataclass(frozen=True)
class PlanViolation:
    """A tensor of a node kept in fp32 (or of an fp32 engine) that the engine stores in reduced precision."""

    node: str
    layer: str
    tensor: str
    type: TensorType

    def __str__(self) -> str:
        return f"{self.node}: {self.tensor} is {self.type.value} in engine layer {self.layer!r}"


def kept_fp32_tensors(model: onnx.ModelProto, fp32_nodes: Iterable[str]) -> dict[str, frozenset[str]]:
    """Each node of ``fp32_nodes`` -> its input and output tensors in the typed graph ``model``."""
    wanted = set(fp32_nodes)
    kept: dict[str, frozenset[str]] = {}

    def visit(graph: onnx.GraphProto) -> None:
        for node in graph.node:
            if node.name in wanted:
                kept[node.name] = frozenset(n for n in (*node.input, *node.output) if n)
            for attribute in node.attribute:
                for body in (attribute.g, *attribute.graphs) if attribute.type in (
                        onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) else ():
                    visit(body)

    visit(model.graph)
    return kept


def plan_violations(info: EngineInformation, kept: Mapping[str, Collection[str]] | None) -> list[PlanViolation]:
    """What the engine stores in reduced precision against the plan: for each node of ``kept`` (node -> its
    tensors), those of its tensors on a layer implementing it; ``kept=None`` (an fp32 engine): every tensor."""
    found = []
    for layer in info.layers:
        reduced = [t for t in layer.tensors if t.type in REDUCED_TYPES]
        if not reduced:
            continue
        if kept is None:
            node = ", ".join(sorted(layer.nodes - {layer.name})) or layer.name
            found += [PlanViolation(node, layer.name, t.name, t.type) for t in reduced]
            continue
        for node in sorted(layer.nodes & set(kept)):
            found += [PlanViolation(node, layer.name, t.name, t.type) for t in reduced if t.name in kept[node]]
    return found


def check_plan_applied(info: EngineInformation, model: onnx.ModelProto, fp32_nodes: Iterable[str],
                       precision: str) -> None:
    """``EngineBuildError`` naming the nodes the engine runs in reduced precision although the plan keeps them
    in fp32 (every node of an fp32 engine)."""
    kept = None if precision == "fp32" else kept_fp32_tensors(model, fp32_nodes)
    violations = plan_violations(info, kept)
    if violations:
        nodes = sorted({v.node for v in violations})
        shown = "; ".join(map(str, violations[:4])) + (f"; and {len(violations) - 4} more" if len(violations) > 4
                                                       else "")
        kept_what = "what the plan keeps in fp32" if kept is not None else "tensors of an fp32 graph"
        raise EngineBuildError(f"the TensorRT {precision} engine stores in reduced precision {kept_what}, at "
                               f"{len(nodes)} node(s) ({', '.join(nodes[:8])}): {shown}")


def nodes_without_layer(info: EngineInformation, nodes: Iterable[str]) -> list[str]:
    """Those of ``nodes`` that no engine layer names (folded by the parser or the builder)."""
    implemented = info.nodes()
    return [node for node in nodes if node not in implemented]
