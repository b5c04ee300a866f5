"""OpenVINO's lowering of a plugin-mode graph: Mamba-2's causal depthwise convolution (+ SiLU) of x, B and C
moved into the ``SelectiveScan`` node that reads them.

The export computes each of the three as MatMul -> Transpose(0, 2, 1) -> Conv (depthwise, left-padded) ->
x * Sigmoid(x) -> Transpose(0, 2, 1) -> Reshape or Unsqueeze -> SelectiveScan. OpenVINO's CPU plugin runs the
convolution channels-last, so it adds a layout reorder on each side of it besides the two Transposes: five
passes over the edge stream's largest tensors for a 4-tap filter, a quarter of a v3 window's time. The lowered
node, ``brr.openvino::CausalConvSelectiveScan``, takes the unconvolved tensors and the three convolutions'
weights and biases; the extension's kernel convolves each block of steps as it reads it.

The node exists only between the ONNX file and the IR an OpenVINO build writes: the exported ONNX keeps the
standard convolution that every other engine runs. A scan whose three inputs do not all match the pattern,
or whose intermediate values are read elsewhere (a probe), is left as it is.
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx
import onnx_ir as ir

LOWERED_DOMAIN = "brr.openvino"
LOWERED_OP = "CausalConvSelectiveScan"
_SCAN_INPUTS = {"x": (0, "Reshape"), "B": (3, "Unsqueeze"), "C": (4, "Unsqueeze")}
_SCAN_ATTRIBUTES = ("dt_softplus", "chunk_size")


@dataclass
class _ConvChain:
    """The unconvolved tensor, the convolution's weight and bias, and the nodes between them and the scan."""
    raw: ir.Value
    weight: ir.Value
    bias: ir.Value
    nodes: list[ir.Node]
    reshape: ir.Node


def _only_use(value: ir.Value, node: ir.Node) -> bool:
    return not value.is_graph_output() and {id(u.node) for u in value.uses()} == {id(node)}


def _is_swap_of_last_two(node: ir.Node | None) -> bool:
    return (node is not None and node.op_type == "Transpose" and node.domain == ""
            and list(node.attributes.get_ints("perm", [])) == [0, 2, 1])


def _causal_depthwise(conv: ir.Node) -> bool:
    """A Conv of one input channel per group, a constant (c, 1, k) weight and (c,) bias, padded k - 1 on the left
    only, stride and dilation 1."""
    if conv.op_type != "Conv" or conv.domain != "" or len(conv.inputs) != 3:
        return False
    weight, bias = conv.inputs[1].const_value, conv.inputs[2].const_value if conv.inputs[2] else None
    if weight is None or bias is None or len(weight.shape) != 3 or weight.shape[1] != 1:
        return False
    channels, width = weight.shape[0], weight.shape[2]
    attributes = conv.attributes
    return (tuple(bias.shape) == (channels,) and attributes.get_int("group", 1) == channels
            and list(attributes.get_ints("pads", [0, 0])) == [width - 1, 0]
            and list(attributes.get_ints("strides", [1])) == [1] and list(attributes.get_ints("dilations", [1])) == [1]
            and attributes.get_string("auto_pad", "NOTSET") == "NOTSET")


def _conv_chain(scan: ir.Node, index: int, reshape_op: str) -> _ConvChain | None:
    reshape = scan.inputs[index].producer() if scan.inputs[index] is not None else None
    if reshape is None or reshape.op_type != reshape_op or not _only_use(scan.inputs[index], scan):
        return None
    back = reshape.inputs[0].producer()
    if not _is_swap_of_last_two(back) or not _only_use(reshape.inputs[0], reshape):
        return None
    silu = back.inputs[0].producer()
    if silu is None or silu.op_type != "Mul" or not _only_use(back.inputs[0], back):
        return None
    sigmoid = next((v.producer() for v in silu.inputs if v.producer() is not None
                    and v.producer().op_type == "Sigmoid"), None)
    if sigmoid is None or not _only_use(sigmoid.outputs[0], silu):
        return None
    conv_out = sigmoid.inputs[0]
    conv = conv_out.producer()
    if (conv is None or set(map(id, silu.inputs)) != {id(conv_out), id(sigmoid.outputs[0])}
            or conv_out.is_graph_output() or {id(u.node) for u in conv_out.uses()} != {id(silu), id(sigmoid)}
            or not _causal_depthwise(conv)):
        return None
    forth = conv.inputs[0].producer()
    if not _is_swap_of_last_two(forth) or not _only_use(conv.inputs[0], conv):
        return None
    return _ConvChain(forth.inputs[0], conv.inputs[1], conv.inputs[2], [forth, conv, sigmoid, silu, back], reshape)


def lower_for_openvino(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """A copy of ``model`` with every ``SelectiveScan`` whose x, B and C come out of Mamba-2's causal depthwise
    convolution replaced by ``CausalConvSelectiveScan``; returns (the copy, the number of scans lowered)."""
    lowered = ir.from_proto(model)
    graph = lowered.graph
    count = 0
    for scan in [n for n in graph if n.op_type == "SelectiveScan" and n.domain == "ai.onnx.contrib"]:
        chains = {name: _conv_chain(scan, index, op) for name, (index, op) in _SCAN_INPUTS.items()}
        if any(chain is None for chain in chains.values()):
            continue
        for chain in chains.values():
            chain.reshape.replace_input_with(0, chain.raw)
            graph.remove(list(reversed(chain.nodes)), safe=True)
        convolution = [v for name in ("x", "B", "C") for v in (chains[name].weight, chains[name].bias)]
        fused = ir.Node(LOWERED_DOMAIN, LOWERED_OP, [*scan.inputs, *convolution],
                        attributes=[scan.attributes[a] for a in _SCAN_ATTRIBUTES], name=scan.name, num_outputs=1)
        graph.insert_before(scan, fused)
        output_name = scan.outputs[0].name
        scan.outputs[0].replace_all_uses_with(fused.outputs[0], replace_graph_outputs=True)
        graph.remove(scan, safe=True)
        fused.outputs[0].name = output_name
        count += 1
    if count:
        lowered.opset_imports[LOWERED_DOMAIN] = 1
    return ir.to_proto(lowered), count
