"""Reduced-precision storage with fp32 arithmetic: what an fp16/bf16 engine computes, as an ONNX graph.

A mixed-precision engine stores a value in fp16 or bf16 between its kernels and computes inside them
in fp32 (TensorRT's fp16 layers; ONNX Runtime's CPU provider, which has no fp16/bf16 kernels for
most of this graph's ops). ``RoundThroughLowPrecision`` writes that storage into the graph as
explicit Cast pairs, so the rounding is the same whichever runtime runs the graph, at every
optimisation level, and whoever consumes a value (a graph output included).
"""

from __future__ import annotations

from collections.abc import Iterable

import ml_dtypes
import numpy as np
import onnx
import onnx_ir as ir
from polygraphy import util
from polygraphy.backend.base import BaseLoader


class RoundThroughLowPrecision(BaseLoader):
    """ONNX model -> low-precision weights and activations rounded through ``precision``, fp32 kernels.

    What a mixed-precision conversion stores in ``precision`` is rounded through it (a Cast pair to
    ``precision`` and back): every float output of a low-precision node, for all its consumers; the
    graph inputs and the outputs of ``fp32_nodes``, for their low-precision consumers only (the cast
    at the boundary, where a pinned node's large result still overflows); float weights used only by
    low-precision nodes are stored in ``precision``. Graph outputs (the probes) are left as computed;
    the nodes that consume them inside the graph see them rounded.
    ``subgraphs``: round inside Loop/If bodies too; otherwise a body is one unit rounded at its boundary.

    A rounded node output is stored under the original tensor's name (in the low precision) by a Cast
    that also takes the node's name (the node itself becomes ``unrounded_name(<name>)``), and each consumer
    casts it back to fp32 just before it runs: node-level comparisons, which align tensors by name,
    see what the consumers see (an fp32 result that overflows only when stored shows up as inf where
    it was made), and between nodes only low-precision tensors live.

    """

    DTYPES = {"bf16": (ir.DataType.BFLOAT16, ml_dtypes.bfloat16), "fp16": (ir.DataType.FLOAT16, np.float16)}

    def __init__(self, model, fp32_nodes: Iterable[str], precision: str = "bf16", subgraphs: bool = False):
        super().__init__()
        if precision not in self.DTYPES:
            raise ValueError(f"precision must be one of {sorted(self.DTYPES)}, got {precision!r}")
        self._model = model
        self.fp32_nodes = set(fp32_nodes)
        self.precision, self.subgraphs = precision, subgraphs

    def call_impl(self) -> onnx.ModelProto:
        proto, _ = util.invoke_if_callable(self._model)
        # Element types of the intermediate tensors decide what is rounded; a graph without value_info
        # would have none.
        model = ir.from_proto(onnx.shape_inference.infer_shapes(proto))
        rounding = _Rounding(model.graph, self.fp32_nodes, self.precision, self.subgraphs)
        rounding.store_weights()
        rounding.store_boundary(rounding.round_node_outputs())
        return ir.to_proto(model)


def unrounded_name(name: str) -> str:
    """What a rounded node and its fp32 result are renamed to: the Cast that stores the result takes the
    original names, so that comparisons by name see the stored value, and the result before storing
    is found under this one."""
    return f"{name}_unrounded"


# An fp32 value entering low-precision consumers: (value, the node after which it is stored, or None for a
# graph input, and the graph it lives in).
Boundary = tuple[ir.Value, ir.Node | None, ir.Graph]


class _Rounding:
    """One conversion of ``graph`` in place: which nodes compute in ``precision``, and the Casts that store
    their values in it (see ``RoundThroughLowPrecision``)."""

    def __init__(self, graph: ir.Graph, fp32_nodes: set[str], precision: str, subgraphs: bool):
        self.graph, self.fp32_nodes, self.subgraphs = graph, fp32_nodes, subgraphs
        self.graph_outputs = {id(v) for v in graph.outputs}
        self.low, self.numpy_low = RoundThroughLowPrecision.DTYPES[precision]
        self.tag = precision
        # A pinned Loop or If computes its body in fp32 too: the body is part of the node.
        self.pinned_bodies = {id(inner) for node in graph if node.name in fp32_nodes
                              for attribute in node.attributes.values() if attribute.type == ir.AttributeType.GRAPH
                              for inner in ir.traversal.RecursiveGraphIterator(attribute.value)}

    def in_scope(self, node: ir.Node) -> bool:
        return node.graph is self.graph or self.subgraphs

    def low_precision(self, node: ir.Node) -> bool:
        return (node.name not in self.fp32_nodes and id(node) not in self.pinned_bodies and node.op_type != "Cast"
                and self.in_scope(node))

    def store(self, value: ir.Value, stored_name: str, after: ir.Node | None, owner: ir.Graph,
              uses: list[tuple[ir.Node, int]]) -> ir.Node:
        """Store ``value`` in the low precision (a Cast after ``after``) and give each of ``uses`` its own
        fp32 copy (a Cast right before the user): between nodes only the low-precision tensor lives,
        as in a real fp16 engine, so rounding costs no memory beyond one consumer's input."""
        down = ir.node("Cast", [value], {"to": self.low}, name=f"{stored_name}_to_{self.tag}")
        down.outputs[0].name, down.outputs[0].dtype, down.outputs[0].shape = stored_name, self.low, value.shape
        if after is None:
            owner.insert_before(next(iter(owner)), down)
        else:
            owner.insert_after(after, down)
        for user, index in uses:
            up = ir.node("Cast", [down.outputs[0]], {"to": ir.DataType.FLOAT},
                         name=f"{stored_name}_for_{user.name}_{index}")
            up.outputs[0].name = up.name
            up.outputs[0].dtype, up.outputs[0].shape = ir.DataType.FLOAT, value.shape
            user.graph.insert_before(user, up)
            user.replace_input_with(index, up.outputs[0])
        return down

    def store_weights(self) -> None:
        """Float weights used only by low-precision nodes of the main graph: stored in the low precision,
        cast back to fp32 once at the top of the graph."""
        graph, tag = self.graph, self.tag
        for name, init in list(graph.initializers.items()):
            users = [node for node, _ in init.uses()]
            if init.dtype != ir.DataType.FLOAT or not users or not all(
                self.low_precision(u) and u.graph is graph for u in users
            ):
                continue
            stored = ir.Value(name=f"{name}_{tag}_weight", type=ir.TensorType(self.low), shape=init.shape,
                              const_value=ir.tensor(init.const_value.numpy().astype(self.numpy_low)))
            graph.register_initializer(stored)
            up = ir.node("Cast", [stored], {"to": ir.DataType.FLOAT}, name=f"{name}_from_{tag}")
            up.outputs[0].name, up.outputs[0].dtype, up.outputs[0].shape = f"{name}_fp32", ir.DataType.FLOAT, init.shape
            graph.insert_before(next(iter(graph)), up)
            init.replace_all_uses_with(up.outputs[0])
            graph.initializers.pop(name)

    def _stored_low(self, value: ir.Value) -> bool:
        return value.dtype == ir.DataType.FLOAT and id(value) not in self.graph_outputs and bool(value.uses())

    def round_node_outputs(self) -> list[Boundary]:
        """Store every low-precision node's float outputs in the low precision; return the fp32 values that
        enter low-precision consumers: the graph inputs, the pinned nodes' outputs and the probes."""
        boundary: list[Boundary] = [(v, None, self.graph) for v in self.graph.inputs]
        nodes = list(ir.traversal.RecursiveGraphIterator(self.graph) if self.subgraphs else self.graph)
        for node in nodes:
            if self.low_precision(node):
                rounded = [v for v in node.outputs if self._stored_low(v)]
                for value in rounded:
                    uses, name = list(value.uses()), value.name
                    value.name = unrounded_name(name)
                    down = self.store(value, name, node, node.graph, uses)
                if len(node.outputs) == 1 and rounded:
                    down.name, node.name = node.name, unrounded_name(node.name)
                # A probe keeps its name and computed value; the nodes consuming it still see it stored.
                boundary += [(v, node, node.graph) for v in node.outputs if id(v) in self.graph_outputs]
            elif node.op_type != "Cast" and self.in_scope(node):
                boundary += [(v, node, node.graph) for v in node.outputs]
        return boundary

    def store_boundary(self, boundary: list[Boundary]) -> None:
        """Each fp32 value of ``boundary`` stored in the low precision for its low-precision consumers only."""
        for value, producer, owner in boundary:
            uses = [(user, index) for user, index in value.uses() if self.low_precision(user)]
            if value.dtype != ir.DataType.FLOAT or not uses:
                continue
            self.store(value, f"{value.name}_{self.tag}", producer, owner, uses)


def low_precision_model(model: onnx.ModelProto, fp32_nodes: Iterable[str], precision: str) -> onnx.ModelProto:
    """The fp16/bf16 engine graph of ``model`` (subgraphs rounded too) with ``fp32_nodes`` computed and stored in fp32."""
    return RoundThroughLowPrecision(model, fp32_nodes, precision, subgraphs=True)()
