"""OpenVINO's lowering of a plugin-mode graph: Mamba-2's causal depthwise convolution (+ SiLU) of x, B and C,
and the gated RMS norm of its output, moved into the ``SelectiveScan`` node between them.

The export computes each of x, B and C as MatMul -> Transpose(0, 2, 1) -> Conv (depthwise, left-padded) ->
x * Sigmoid(x) -> Transpose(0, 2, 1) -> Reshape or Unsqueeze -> SelectiveScan. OpenVINO's CPU plugin runs the
convolution channels-last, so it adds a layout reorder on each side of it besides the two Transposes: five
passes over the edge stream's largest tensors for a 4-tap filter, a quarter of a v3 window's time. After the
scan, Reshape -> y * SiLU(z) -> RMS norm (Pow, ReduceMean, Add eps, Sqrt, Reciprocal, Mul) -> Mul weight is
three more passes. The lowered node, ``brr.openvino::Mamba2Scan``, takes the unconvolved tensors and the three
convolutions' weights and biases, then z and the norm's weight (attribute norm_eps) when the norm matched too;
the extension's kernel convolves each block of steps as it reads it, and gates and normalises each batch
row's output while it is in cache.

The node exists only between the ONNX file and the IR an OpenVINO build writes: the exported ONNX keeps the
standard graph that every other engine runs. A scan whose three inputs do not all match the pattern, or
whose intermediate values are read elsewhere (a probe), is left as it is; a norm that does not match stays
in the graph after a lowered scan.
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx
import onnx_ir as ir

LOWERED_DOMAIN = "brr.openvino"
LOWERED_OP = "Mamba2Scan"
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


@dataclass
class _GatedNorm:
    """z, the norm's weight and epsilon, the nodes from the scan's reshaped output to the normalised one."""
    z: ir.Value
    weight: ir.Value
    eps: float
    nodes: list[ir.Node]
    reshape: ir.Node


def _only_use(value: ir.Value, node: ir.Node) -> bool:
    return not value.is_graph_output() and {id(u.node) for u in value.uses()} == {id(node)}


def _users(value: ir.Value) -> list[ir.Node]:
    return [] if value.is_graph_output() else list({id(u.node): u.node for u in value.uses()}.values())


def _sole_user(value: ir.Value, op_type: str) -> ir.Node | None:
    users = _users(value)
    return users[0] if len(users) == 1 and users[0].op_type == op_type and users[0].domain == "" else None


def _other_input(node: ir.Node, value: ir.Value) -> ir.Value | None:
    others = [v for v in node.inputs if v is not value]
    return others[0] if len(node.inputs) == 2 and len(others) == 1 else None


def _constant(value: ir.Value | None):
    return None if value is None or value.const_value is None else value.const_value.numpy()


def _silu_of(value: ir.Value | None) -> tuple[ir.Value, list[ir.Node]] | None:
    """(z, its nodes) when ``value`` is z * Sigmoid(z) read once."""
    mul = value.producer() if value is not None else None
    if mul is None or mul.op_type != "Mul" or len(mul.inputs) != 2:
        return None
    for z, sig in (mul.inputs, reversed(mul.inputs)):
        sigmoid = sig.producer()
        if sigmoid is not None and sigmoid.op_type == "Sigmoid" and sigmoid.inputs[0] is z and _only_use(sig, mul):
            return z, [sigmoid, mul]
    return None


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
    silu = _silu_of(back.inputs[0]) if _only_use(back.inputs[0], back) else None
    if silu is None:
        return None
    conv_out, silu_nodes = silu
    conv = conv_out.producer()
    if (conv is None or conv_out.is_graph_output() or {id(n) for n in _users(conv_out)} != set(map(id, silu_nodes))
            or not _causal_depthwise(conv)):
        return None
    forth = conv.inputs[0].producer()
    if not _is_swap_of_last_two(forth) or not _only_use(conv.inputs[0], conv):
        return None
    return _ConvChain(forth.inputs[0], conv.inputs[1], conv.inputs[2], [forth, conv, *silu_nodes, back], reshape)


def _gated_norm(scan: ir.Node) -> _GatedNorm | None:
    """Reshape -> g = y * SiLU(z) -> g * Reciprocal(Sqrt(ReduceMean(Pow(g, 2), -1) + eps)) * weight, the
    ``GatedRMSNorm`` of ``brr.model.mamba2`` as the exporter writes it."""
    reshape = _sole_user(scan.outputs[0], "Reshape")
    gate = _sole_user(reshape.outputs[0], "Mul") if reshape is not None else None
    silu = _silu_of(_other_input(gate, reshape.outputs[0])) if gate is not None else None
    if silu is None or not _only_use(silu[1][-1].outputs[0], gate):
        return None
    g = gate.outputs[0]
    users = {n.op_type: n for n in _users(g)}
    if len(_users(g)) != 2 or set(users) != {"Pow", "Mul"}:
        return None
    power, scale = users["Pow"], users["Mul"]
    mean = _sole_user(power.outputs[0], "ReduceMean") if _constant(power.inputs[1]) == 2 else None
    add = _sole_user(mean.outputs[0], "Add") if mean is not None else None
    if (mean is None or add is None or mean.attributes.get_int("keepdims", 1) != 1 or len(mean.inputs) != 2
            or list(_constant(mean.inputs[1]) if _constant(mean.inputs[1]) is not None else []) not in ([-1], [2])):
        return None
    eps = _constant(_other_input(add, mean.outputs[0]))
    sqrt = _sole_user(add.outputs[0], "Sqrt")
    reciprocal = _sole_user(sqrt.outputs[0], "Reciprocal") if sqrt is not None else None
    if eps is None or eps.size != 1 or reciprocal is None or _sole_user(reciprocal.outputs[0], "Mul") is not scale:
        return None
    weighting = _sole_user(scale.outputs[0], "Mul")
    weight = _other_input(weighting, scale.outputs[0]) if weighting is not None else None
    if weight is None or _constant(weight) is None or _constant(weight).ndim != 1 or \
            weighting.outputs[0].is_graph_output():  # a graph output keeps its name: left to OpenVINO
        return None
    return _GatedNorm(silu[0], weight, float(eps.reshape(())),
                      [*silu[1], gate, power, mean, add, sqrt, reciprocal, scale, weighting], reshape)


def lower_for_openvino(model: onnx.ModelProto) -> tuple[onnx.ModelProto, dict[str, int]]:
    """A copy of ``model`` with every ``SelectiveScan`` whose x, B and C come out of Mamba-2's causal depthwise
    convolution replaced by ``Mamba2Scan`` (with its gated norm where it matches); returns the copy and how many
    scans (``lowered_scans``) and norms (``lowered_gated_norms``) it lowered."""
    lowered = ir.from_proto(model)
    graph = lowered.graph
    counts = {"lowered_scans": 0, "lowered_gated_norms": 0}
    for scan in [n for n in graph if n.op_type == "SelectiveScan" and n.domain == "ai.onnx.contrib"]:
        chains = {name: _conv_chain(scan, index, op) for name, (index, op) in _SCAN_INPUTS.items()}
        if any(chain is None for chain in chains.values()):
            continue
        for chain in chains.values():
            chain.reshape.replace_input_with(0, chain.raw)
            graph.remove(list(reversed(chain.nodes)), safe=True)
        convolution = [v for name in ("x", "B", "C") for v in (chains[name].weight, chains[name].bias)]
        norm = _gated_norm(scan)
        attributes = [scan.attributes[a] for a in _SCAN_ATTRIBUTES]
        if norm is not None:
            attributes.append(ir.AttrFloat32("norm_eps", norm.eps))
        fused = ir.Node(LOWERED_DOMAIN, LOWERED_OP, [*scan.inputs, *convolution, *([norm.z, norm.weight] if norm else [])],
                        attributes=attributes, name=scan.name, num_outputs=1)
        graph.insert_before(scan, fused)
        if norm is not None:
            norm.nodes[-1].outputs[0].replace_all_uses_with(norm.reshape.outputs[0], replace_graph_outputs=True)
            graph.remove(list(reversed(norm.nodes)), safe=True)
        output_name = scan.outputs[0].name
        scan.outputs[0].replace_all_uses_with(fused.outputs[0], replace_graph_outputs=True)
        graph.remove(scan, safe=True)
        fused.outputs[0].name = output_name
        counts["lowered_scans"] += 1
        counts["lowered_gated_norms"] += norm is not None
    if counts["lowered_scans"]:
        lowered.opset_imports[LOWERED_DOMAIN] = 1
    return ir.to_proto(lowered), counts
