"""The custom ``SelectiveScan`` node takes in the causal depthwise convolution (+ SiLU) of its x, B and C and
becomes ``Mamba2Scan`` (why: the package docstring). The export computes each of the three as MatMul ->
Transpose(0, 2, 1) -> Conv (depthwise, left-padded) -> y * Sigmoid(y) -> Transpose(0, 2, 1) -> Reshape (x) or
Unsqueeze (B, C) -> the scan; the node reads the MatMul's output and the Conv's weight and bias instead, and
the Reshape or Unsqueeze stays. A chain whose values are read elsewhere (a probe) keeps its scan as it is."""

from __future__ import annotations

from dataclasses import dataclass

import onnx_ir as ir

from brr.backends.openvino.lowering.matching import is_swap_of_last_two, only_use, silu_of, users
from brr.backends.openvino.lowering.nodes import CUSTOM_SCAN, SCAN
from brr.backends.openvino.lowering.rewrite import Rewrite, Target, require
from brr.ops.selective_scan.lowered_inputs import Part

# The scan's convolved inputs, and the node that gives each its scan's shape after the convolution.
_CONVOLVED = {"x": "Reshape", "B": "Unsqueeze", "C": "Unsqueeze"}
_KEPT_ATTRIBUTES = ("dt_softplus", "chunk_size")


@dataclass
class _ConvChain:
    """The unconvolved tensor, the convolution's weight and bias, and the nodes between them and the scan."""
    raw: ir.Value
    weight: ir.Value
    bias: ir.Value
    nodes: list[ir.Node]
    reshape: ir.Node


def candidates(graph: ir.Graph, target: Target) -> list[ir.Node]:
    return [n for n in graph if CUSTOM_SCAN.is_one(n)]


def _require_causal_depthwise(conv: ir.Node, name: str) -> None:
    """A Conv of one input channel per group, a constant (c, 1, k) weight and (c,) bias, padded k - 1 on the
    left only, stride and dilation 1."""
    require(conv.op_type == "Conv" and conv.domain == "" and len(conv.inputs) == 3,
            f"{name}'s convolution is not a Conv with a bias")
    weight, bias = conv.inputs[1].const_value, conv.inputs[2].const_value if conv.inputs[2] else None
    require(weight is not None and bias is not None and len(weight.shape) == 3 and weight.shape[1] == 1,
            f"{name}'s convolution has no constant (channels, 1, width) weight and bias")
    channels, width = weight.shape[0], weight.shape[2]
    attributes = conv.attributes
    require(tuple(bias.shape) == (channels,) and attributes.get_int("group", 1) == channels,
            f"{name}'s convolution is not depthwise")
    require(list(attributes.get_ints("pads", [0, 0])) == [width - 1, 0]
            and list(attributes.get_ints("strides", [1])) == [1]
            and list(attributes.get_ints("dilations", [1])) == [1]
            and attributes.get_string("auto_pad", "NOTSET") == "NOTSET",
            f"{name}'s convolution is not causal (padded width - 1 on the left only, stride and dilation 1)")


def _conv_chain(scan: ir.Node, name: str, reshape_op: str) -> _ConvChain:
    value = CUSTOM_SCAN.input(scan, name)
    reshape = value.producer() if value is not None else None
    require(reshape is not None and reshape.op_type == reshape_op and only_use(value, scan),
            f"{name} is not a {reshape_op} read only by the scan")
    back = reshape.inputs[0].producer()
    require(is_swap_of_last_two(back) and only_use(reshape.inputs[0], reshape),
            f"{name}'s {reshape_op} does not read a Transpose(0, 2, 1) read only there")
    silu = silu_of(back.inputs[0]) if only_use(back.inputs[0], back) else None
    require(silu is not None, f"{name}'s Transpose does not read a SiLU read only there")
    conv_out, silu_nodes = silu
    conv = conv_out.producer()
    require(conv is not None and not conv_out.is_graph_output()
            and {id(n) for n in users(conv_out)} == set(map(id, silu_nodes)),
            f"{name}'s SiLU does not read a node's output read only there")
    _require_causal_depthwise(conv, name)
    forth = conv.inputs[0].producer()
    require(is_swap_of_last_two(forth) and only_use(conv.inputs[0], conv),
            f"{name}'s convolution does not read a Transpose(0, 2, 1) read only there")
    return _ConvChain(forth.inputs[0], conv.inputs[1], conv.inputs[2], [forth, conv, *silu_nodes, back],
                      reshape)


def apply(graph: ir.Graph, scan: ir.Node, target: Target) -> None:
    chains = {name: _conv_chain(scan, name, reshape_op) for name, reshape_op in _CONVOLVED.items()}
    for chain in chains.values():
        chain.reshape.replace_input_with(0, chain.raw)
        graph.remove(list(reversed(chain.nodes)), safe=True)
    inputs = {name: CUSTOM_SCAN.input(scan, name) for name in SCAN.inputs.names_of(Part.SCAN)}
    for name, chain in chains.items():
        inputs |= {f"{name}_conv_weight": chain.weight, f"{name}_conv_bias": chain.bias}
    fused = SCAN.make(scan.name, inputs, [scan.attributes[a] for a in _KEPT_ATTRIBUTES])
    graph.insert_before(scan, fused)
    output_name = scan.outputs[0].name
    scan.outputs[0].replace_all_uses_with(fused.outputs[0], replace_graph_outputs=True)
    graph.remove(scan, safe=True)
    fused.outputs[0].name = output_name


REWRITE = Rewrite("lowered_scans", candidates, apply, needs_extension=True)
