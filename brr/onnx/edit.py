"""Copies of a graph edited without changing what it computes: outputs marked, nodes put in order."""

from __future__ import annotations

import onnx
from polygraphy.backend.onnx import ModifyOutputs


def mark_outputs(model: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    """A copy of ``model`` whose outputs are ``names`` (in that order, each once)."""
    return ModifyOutputs(model, outputs=list(dict.fromkeys(names)), copy=True)()


def topologically_sorted(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy whose top-level nodes are in dependency order (ONNX Runtime sorts by itself, the reference
    evaluator does not)."""
    graph = model.graph
    available = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        ready = [n for n in pending if all(name in available for name in n.input)]
        if not ready:
            raise ValueError(f"graph {graph.name!r} has a cycle or an undefined input at {pending[0].name!r}")
        for node in ready:
            ordered.append(node)
            available.update(node.output)
        pending = [n for n in pending if n not in ready]
    copy = onnx.ModelProto.FromString(model.SerializeToString())
    del copy.graph.node[:]
    copy.graph.node.extend(ordered)
    return copy
