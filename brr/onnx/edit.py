"""A copy of a graph with its nodes put in dependency order, computing the same."""

from __future__ import annotations

import onnx


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
