"""OpenVINO's lowering of an exported graph.

**Widely dilated convolutions run on phases.** A Conv1d of dilation d >= ``PHASE_DILATION`` over a length
divisible by d is the same convolution, undilated, over the d interleaved phases of its input (phase r holds
steps r, r + d, r + 2d, ...), stacked along the batch: Reshape -> Transpose -> Reshape, the Conv with
dilation 1 and padding / d, and the inverse. OpenVINO's fp32 convolution kernel slows down at wide
dilations (the TCN's 256 -> 512 convolution of dilation 128 ran at 85 GFLOP/s against 181 at dilation 1 on
an AMX Xeon, 2 threads) and runs the phase form at the speed of an undilated one; its bf16 kernel does not
slow down, so only the convolutions an engine runs in fp32 (all of an fp32 engine's, a bf16 engine's pinned
ones) are rewritten. The new nodes take the convolution's name as a prefix, so a precision plan that pins
the convolution pins them too.

**Plugin graphs: Mamba-2's causal depthwise convolution (+ SiLU) of x, B and C, and the gated RMS norm of
its output, move into the ``SelectiveScan`` node between them.**

The export computes each of x, B and C as MatMul -> Transpose(0, 2, 1) -> Conv (depthwise, left-padded) ->
x * Sigmoid(x) -> Transpose(0, 2, 1) -> Reshape or Unsqueeze -> SelectiveScan. OpenVINO's CPU plugin runs the
convolution channels-last, so it adds a layout reorder on each side of it besides the two Transposes: five
passes over the edge stream's largest tensors for a 4-tap filter, a quarter of a v3 window's time. After the
scan, Reshape -> y * SiLU(z) -> RMS norm (Pow, ReduceMean, Add eps, Sqrt, Reciprocal, Mul) -> Mul weight is
three more passes. The lowered node, ``brr.openvino::Mamba2Scan``, takes the unconvolved tensors and the three
convolutions' weights and biases, then z and the norm's weight (attribute norm_eps) when the norm matched too;
the extension's kernel convolves each block of steps as it reads it, and gates and normalises each batch
row's output while it is in cache.

**Narrow streams: the input projection moves in too.** Where the five MatMuls that project one input u into z,
x, B, C and dt (mamba_ssm's in_proj, exported as five Linears) have at most ``PROJECTED_MAX_FEATURES`` input
features, a lowered scan with its norm becomes ``brr.openvino::Mamba2ProjectedScan`` of u and the five weights
side by side. With 16 features (the edge stream) a GEMM writes five values for each two multiply-adds it does
per input: OpenVINO's five MatMuls wrote 58 MB per v3 window and layer that the scan read back, and took
about as long as the scan itself; the kernel projects each batch row into cache instead. The output projection
that follows (Reshape -> MatMul, 32 -> 16 features) moves in too: the scan's 32-wide output then never leaves
the cache. The node stream's 64 features keep OpenVINO's GEMMs, which run near the compute peak there (projecting
them inside made a v3 window slower).

**Backward directions run backwards in the kernel.** A bidirectional layer's backward direction is
flip(block(flip(u))) along l, two Slices with step -1, each a full copy. Either lowered node takes the flip of
u away (the projections between it and a ``Mamba2Scan`` act on each step alone, so they read u itself) and the
flip back (likewise after per-step nodes: the output projection), and gets the attribute ``reversed``: the
kernel walks each row's steps from the last, reading its inputs and writing its output in place; the gated
norm pairs each step's output with that step's z, whichever the direction.

**A layer's two directions are summed, not concatenated.** A bidirectional layer concatenates its
directions' output projections y_f O_f and y_b O_b and projects the concatenation by W: that equals
y_f (O_f W_f) + y_b (O_b W_b), W_f and W_b W's two halves of rows. Each direction's projection (a MatMul, or
the edge scan's own) absorbs its half and an Add replaces the Concat and the combining MatMul: a third of the
node stream's output-side GEMM work and a copy of the concatenation go (15 ms of a v3 window in fp32).

**The edge stream's first layer projects its scalar.** Its u is the similarity s lifted by a constant
(1, 16) w, so its input projection u W_in is s (w W_in): one multiply-add per column instead of sixteen. The
fold holds where the lift is linear: without guards, or where the lift's clamp provably never binds (a
clamp of s above it bounds |s|, and that bound times max |w| sits inside the lift's clamp).

All of this exists only between the ONNX file and the IR an OpenVINO build writes: the exported ONNX keeps the
standard graph that every other engine runs. A scan whose three inputs do not all match the pattern, or
whose intermediate values are read elsewhere (a probe), is left as it is; a norm that does not match stays
in the graph after a lowered scan.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import onnx
import onnx_ir as ir

LOWERED_DOMAIN = "brr.openvino"
LOWERED_OP = "Mamba2Scan"
PROJECTED_OP = "Mamba2ProjectedScan"
PROJECTED_MAX_FEATURES = 16
_SCAN_INPUTS = {"x": (0, "Reshape"), "B": (3, "Unsqueeze"), "C": (4, "Unsqueeze")}
_SCAN_ATTRIBUTES = ("dt_softplus", "chunk_size")
PHASE_DILATION = 64
# Mamba2Scan's inputs in mamba_ssm's in_proj order: z (13), x (0, a Reshape of its projection), B and C (3, 4,
# Unsqueezes: one group), dt (1).
_PROJECTED_INPUTS = ((13, None), (0, "Reshape"), (3, "Unsqueeze"), (4, "Unsqueeze"), (1, None))
# Mamba2ProjectedScan's inputs with its output projection, whose weight is the last.
_PROJECTED_OUT_INPUTS = 13


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


def _projection_of(value: ir.Value | None, through: str | None) -> tuple[ir.Value, np.ndarray, list[ir.Node]] | None:
    """(u, weight, nodes) when ``value`` is MatMul(u, constant 2-D weight), through one ``through`` node
    (Reshape, Unsqueeze) when given, each output read once."""
    nodes = []
    if through is not None:
        node = value.producer() if value is not None else None
        if node is None or node.op_type != through or node.domain != "" or len(_users(value)) != 1:
            return None
        nodes.append(node)
        value = node.inputs[0]
    matmul = value.producer() if value is not None else None
    if matmul is None or matmul.op_type != "MatMul" or matmul.domain != "" or len(_users(value)) != 1:
        return None
    weight = _constant(matmul.inputs[1])
    if weight is None or weight.ndim != 2:
        return None
    return matmul.inputs[0], weight, [*nodes, matmul]


def _project_inside(graph: ir.Graph, fused: ir.Node, shapes: dict[str, tuple[int | None, ...]]) -> ir.Node | None:
    """Replace the lowered scan-with-norm ``fused`` by ``PROJECTED_OP`` when z, x, B, C and dt are projections
    of one narrow u; returns the new node."""
    parts = [_projection_of(fused.inputs[i], through) for i, through in _PROJECTED_INPUTS]
    if any(part is None for part in parts) or len({id(u) for u, _, _ in parts}) != 1:
        return None
    u = parts[0][0]
    weights = [weight for _, weight, _ in parts]
    if (len(shapes.get(u.name, ())) != 3 or len({w.shape[0] for w in weights}) != 1
            or weights[0].shape[0] > PROJECTED_MAX_FEATURES):
        return None
    weight = ir.Value(name=f"{fused.name}/in_proj_weight",
                      const_value=ir.tensor(np.concatenate(weights, axis=1).astype(np.float32)))
    graph.register_initializer(weight)
    A, D, dt_bias = fused.inputs[2], fused.inputs[5], fused.inputs[6]
    attributes = [*(fused.attributes[a] for a in (*_SCAN_ATTRIBUTES, "norm_eps")), ir.AttrInt64("groups", 1)]
    projected = ir.Node(LOWERED_DOMAIN, PROJECTED_OP, [u, weight, A, D, dt_bias, *fused.inputs[7:13], fused.inputs[14]],
                        attributes=attributes, name=fused.name, num_outputs=1)
    graph.insert_before(fused, projected)
    output_name = fused.outputs[0].name
    fused.outputs[0].replace_all_uses_with(projected.outputs[0], replace_graph_outputs=True)
    graph.remove(fused, safe=True)
    graph.remove([node for _, _, nodes in parts for node in nodes], safe=True)
    projected.outputs[0].name = output_name
    return projected


def _is_time_flip(node: ir.Node | None) -> bool:
    """Slice(starts -1, ends -inf, axes 1, steps -1): the exporter's torch.flip of (b, l, features) along l."""
    if node is None or node.op_type != "Slice" or node.domain != "" or len(node.inputs) != 5:
        return False
    starts, ends, axes, steps = (_constant(v) for v in node.inputs[1:])
    return (all(c is not None and c.size == 1 for c in (starts, ends, axes, steps)) and int(starts[0]) == -1
            and int(ends[0]) <= np.iinfo(np.int32).min and int(axes[0]) == 1 and int(steps[0]) == -1)


def _per_step(node: ir.Node, shapes: dict[str, tuple[int | None, ...]]) -> bool:
    """A node that maps each step of a (b, l, ...) tensor on its own, so that it commutes with a flip along l:
    MatMul by a constant 2-D weight, Unsqueeze after the first two axes, Reshape of the axes after them."""
    if node.domain != "":
        return False
    if node.op_type == "MatMul":
        weight = _constant(node.inputs[1])
        return weight is not None and weight.ndim == 2
    if node.op_type == "Unsqueeze":
        axes = _constant(node.inputs[1]) if len(node.inputs) == 2 else None
        return axes is not None and bool((axes >= 2).all())
    if node.op_type == "Reshape":
        source, target = shapes.get(node.inputs[0].name), shapes.get(node.outputs[0].name)
        # l kept and the values per step kept (then so is b, symbolic or not): only the axes after l regroup.
        return (source is not None and target is not None and min(len(source), len(target)) >= 3
                and None not in (*source[1:], *target[1:]) and source[1] == target[1]
                and np.prod(source[2:]) == np.prod(target[2:]))
    return False


def _flip_after(value: ir.Value, shapes: dict[str, tuple[int | None, ...]]) -> ir.Node | None:
    """The time flip ``value`` reaches through per-step nodes, each value on the way read only by the next."""
    while len(users := _users(value)) == 1:
        node = users[0]
        if _is_time_flip(node) and node.inputs[0] is value:
            return None if node.outputs[0].is_graph_output() else node
        if not _per_step(node, shapes) or node.inputs[0] is not value:
            return None
        value = node.outputs[0]
    return None


def _flipped_projections(scan: ir.Node, shapes: dict[str, tuple[int | None, ...]]) -> tuple[ir.Node, list[ir.Node]] | None:
    """(flip, MatMuls) when the lowered scan-with-norm ``scan``'s z, x, B, C and dt are per-step projections of one
    flip(u) along l that nothing else reads."""
    parts = [_projection_of(scan.inputs[i], through) for i, through in _PROJECTED_INPUTS]
    if any(part is None for part in parts) or not all(_per_step(n, shapes) for _, _, nodes in parts for n in nodes):
        return None
    matmuls = [nodes[-1] for _, _, nodes in parts]
    into = matmuls[0].inputs[0].producer()
    if not _is_time_flip(into) or {id(n) for n in _users(into.outputs[0])} != {id(m) for m in matmuls}:
        return None
    return into, matmuls


def _run_backwards_inside(graph: ir.Graph, scan: ir.Node, shapes: dict[str, tuple[int | None, ...]]) -> bool:
    """Drop the flips along l around the lowered scan-with-norm ``scan`` (of u, or of u's projections, into it;
    of its output, after per-step nodes, out of it; each read only there) and have it run backwards in time
    instead: flip(block(flip(u))) without the two flipped copies."""
    back = _flip_after(scan.outputs[0], shapes)
    if back is None:
        return False
    if scan.op_type == PROJECTED_OP:
        into = scan.inputs[0].producer()
        if not _is_time_flip(into) or len(_users(scan.inputs[0])) != 1:
            return False
        readers = [scan]
    else:
        flipped = _flipped_projections(scan, shapes)
        if flipped is None:
            return False
        into, readers = flipped
    for reader in readers:
        reader.replace_input_with(0, into.inputs[0])
    scan.attributes["reversed"] = ir.AttrInt64("reversed", 1)
    back.outputs[0].replace_all_uses_with(back.inputs[0])
    graph.remove([back, into], safe=True)
    return True


def _project_output_inside(graph: ir.Graph, projected: ir.Node) -> bool:
    """Give ``projected`` the output projection that follows it, Reshape(b, l, h p) -> MatMul(constant weight),
    when both are read only there: the node then outputs the MatMul's value."""
    reshape = _sole_user(projected.outputs[0], "Reshape")
    matmul = _sole_user(reshape.outputs[0], "MatMul") if reshape is not None else None
    if matmul is None or matmul.inputs[0] is not reshape.outputs[0] or matmul.outputs[0].is_graph_output():
        return False
    weight = _constant(matmul.inputs[1])
    if weight is None or weight.ndim != 2:
        return False
    projected.resize_inputs(len(projected.inputs) + 1)
    projected.replace_input_with(len(projected.inputs) - 1, matmul.inputs[1])
    matmul.outputs[0].replace_all_uses_with(projected.outputs[0])
    output_name = matmul.outputs[0].name
    graph.remove([matmul, reshape], safe=True)
    projected.outputs[0].name = output_name
    return True


# Nodes whose output holds only values of their first input: a bound on its magnitude bounds theirs.
_VALUE_PRESERVING = ("Reshape", "Transpose", "Gather", "Squeeze", "Unsqueeze", "Identity", "Flatten")


def _magnitude_bound(value: ir.Value) -> float | None:
    """A bound on |value| proven by a Clip between constants above it, through value-preserving nodes; None when
    there is none. (A NaN is bounded by nothing: it passes both Clips alike.)"""
    node = value.producer()
    while node is not None and node.domain == "" and node.op_type in _VALUE_PRESERVING:
        node = node.inputs[0].producer()
    if node is None or node.op_type != "Clip" or node.domain != "" or len(node.inputs) != 3:
        return None
    low, high = _constant(node.inputs[1]), _constant(node.inputs[2])
    return None if low is None or high is None else float(max(abs(low), abs(high)))


def _lift_of(u: ir.Value, shapes: dict[str, tuple[int | None, ...]]) -> tuple[ir.Value, np.ndarray] | None:
    """(s, w) when u = s w, or Clip(s w) that provably never clips: s (b, l, 1), w a constant (1, features)."""
    clip = u.producer()
    lifted = clip.inputs[0] if clip is not None and clip.op_type == "Clip" and clip.domain == "" else u
    matmul = lifted.producer()
    if matmul is None or matmul.op_type != "MatMul" or matmul.domain != "":
        return None
    source, w = matmul.inputs[0], _constant(matmul.inputs[1])
    if w is None or w.ndim != 2 or w.shape[0] != 1 or shapes.get(source.name, (None,))[-1] != 1:
        return None
    if lifted is not u:
        low = _constant(clip.inputs[1]) if len(clip.inputs) > 1 and clip.inputs[1] is not None else None
        high = _constant(clip.inputs[2]) if len(clip.inputs) > 2 and clip.inputs[2] is not None else None
        bound = _magnitude_bound(source)
        # |s w_k| <= bound max|w| must sit inside [low, high] with room for fp32 rounding.
        reach = None if bound is None else bound * float(np.abs(w).max()) * (1 + 2.0 ** -16)
        if reach is None or low is None or high is None or reach > min(-float(low), float(high)):
            return None
    return source, w


def _fold_lift_inside(graph: ir.Graph, projected: ir.Node, shapes: dict[str, tuple[int | None, ...]]) -> bool:
    """Have ``projected`` read the scalar s that its u lifts (u = s w, the edge stream's first layer), projecting
    it by w's product with its input projection: one multiply-add per column instead of one per feature."""
    lift = _lift_of(projected.inputs[0], shapes)
    if lift is None:
        return False
    source, w = lift
    weight = projected.inputs[1]
    folded = ir.Value(name=f"{projected.name}/lifted_in_proj_weight",
                      const_value=ir.tensor((w.astype(np.float64) @ _constant(weight).astype(np.float64))
                                            .astype(np.float32)))
    graph.register_initializer(folded)
    projected.replace_input_with(0, source)
    projected.replace_input_with(1, folded)
    if not weight.uses():
        graph.initializers.pop(weight.name)
    return True


def _output_projection(value: ir.Value) -> tuple[ir.Node, int] | None:
    """(node, index of its constant 2-D weight) when ``value``, read once, is a MatMul's output or a projected
    scan's with its output projection."""
    node = value.producer()
    if node is None or value.is_graph_output() or len(_users(value)) != 1:
        return None
    if node.op_type == "MatMul" and node.domain == "":
        index = 1
    elif node.op_type == PROJECTED_OP and node.domain == LOWERED_DOMAIN and len(node.inputs) == _PROJECTED_OUT_INPUTS:
        index = _PROJECTED_OUT_INPUTS - 1
    else:
        return None
    weight = _constant(node.inputs[index])
    return (node, index) if weight is not None and weight.ndim == 2 else None


def _sum_directions(graph: ir.Graph, concat: ir.Node, pinned: set[str] | None) -> bool:
    """Concat(y_1 O_1, ..., y_k O_k) W along the features, W a constant, is y_1 (O_1 W_1) + ... + y_k (O_k W_k),
    W_i the rows of W that read part i: each part's projection absorbs its rows of W, and an Add of the parts
    replaces the Concat and the MatMul (a bidirectional layer's combining Linear). ``pinned`` (None: every node
    runs in fp32) must hold all of the nodes or none, so that no product changes precision."""
    matmul = _sole_user(concat.outputs[0], "MatMul")
    if (concat.op_type != "Concat" or concat.domain != "" or concat.attributes.get_int("axis", 0) != -1
            or matmul is None or matmul.inputs[0] is not concat.outputs[0] or matmul.outputs[0].is_graph_output()):
        return False
    combining = _constant(matmul.inputs[1])
    parts = [_output_projection(value) for value in concat.inputs]
    if combining is None or combining.ndim != 2 or any(part is None for part in parts) or \
            len({id(node) for node, _ in parts}) != len(parts):
        return False
    widths = [_constant(node.inputs[index]).shape[1] for node, index in parts]
    if sum(widths) != combining.shape[0]:
        return False
    if pinned is not None and len({node.name in pinned for node in (matmul, *(node for node, _ in parts))}) != 1:
        return False
    row = 0
    for (node, index), width in zip(parts, widths):
        own = _constant(node.inputs[index]).astype(np.float64) @ combining[row:row + width].astype(np.float64)
        absorbed = ir.Value(name=f"{node.name}/absorbed_{matmul.name}_weight", const_value=ir.tensor(own.astype(np.float32)))
        graph.register_initializer(absorbed)
        old = node.inputs[index]
        node.replace_input_with(index, absorbed)
        if not old.uses() and old.name in graph.initializers:
            graph.initializers.pop(old.name)
        row += width
    total = concat.inputs[0]
    added = []
    for i, value in enumerate(concat.inputs[1:]):
        add = ir.Node("", "Add", [total, value], name=f"{matmul.name}/sum_{i}", num_outputs=1)
        add.outputs[0].name = add.name
        added.append(add)
        total = add.outputs[0]
    for add in added:
        graph.insert_before(matmul, add)
    matmul.outputs[0].replace_all_uses_with(total)
    graph.remove([matmul, concat], safe=True)
    return True


def _static_shapes(model: onnx.ModelProto) -> dict[str, tuple[int | None, ...]]:
    """Shape inference's shapes of ``model``'s values (None for a dimension it left symbolic), read only:
    the lowered graph is built from ``model`` itself, so no inferred shape goes stale when a node changes."""
    graph = onnx.shape_inference.infer_shapes(model).graph
    return {v.name: tuple(d.dim_value if d.HasField("dim_value") else None for d in v.type.tensor_type.shape.dim)
            for v in [*graph.input, *graph.value_info] if v.type.tensor_type.HasField("shape")}


def _phase_layout(conv: ir.Node, shapes: dict[str, tuple[int | None, ...]]) -> tuple[int, int, int, int, int] | None:
    """(dilation, in channels, length, left pad, right pad) of a 1-D convolution worth running on phases."""
    attributes = conv.attributes
    source = shapes.get(conv.inputs[0].name)
    weight = shapes.get(conv.inputs[1].name) if len(conv.inputs) > 1 and conv.inputs[1] is not None else None
    # Any batch; static channels, length and weight.
    if (conv.outputs[0].is_graph_output() or source is None or weight is None or len(source) != 3
            or len(weight) != 3 or None in (*source[1:], *weight)):
        return None
    (dilation,), (stride,) = attributes.get_ints("dilations", [1]), attributes.get_ints("strides", [1])
    pads = list(attributes.get_ints("pads", [0, 0]))
    _, channels, length = source
    if (dilation < PHASE_DILATION or stride != 1 or attributes.get_string("auto_pad", "NOTSET") != "NOTSET"
            or length % dilation or any(p % dilation for p in pads)):
        return None
    return dilation, channels, length, pads[0], pads[1]


def _run_on_phases(graph: ir.Graph, conv: ir.Node, shapes: dict[str, tuple[int | None, ...]]) -> bool:
    layout = _phase_layout(conv, shapes)
    if layout is None:
        return False
    dilation, channels, length, left, right = layout
    out_channels, _, taps = shapes[conv.inputs[1].name]
    out_length = length + left + right - dilation * (taps - 1)

    def step(name: str, op_type: str, source: ir.Value, dims: list[int] | None = None,
             perm: list[int] | None = None) -> ir.Node:
        inputs = [source]
        if dims is not None:
            inputs.append(ir.Value(name=f"{conv.name}/{name}_shape", const_value=ir.tensor(np.array(dims, np.int64))))
            graph.register_initializer(inputs[-1])
        made = ir.Node("", op_type, inputs, attributes=[ir.AttrInt64s("perm", perm)] if perm else [],
                       name=f"{conv.name}/{name}", num_outputs=1)
        made.outputs[0].name = made.name
        return made

    # (b, c, t) -> (b, c, t/d, d) -> (b, d, c, t/d) -> (b*d, c, t/d), and the inverse after the convolution.
    into = [step("steps_by_phase", "Reshape", conv.inputs[0], dims=[0, channels, length // dilation, dilation])]
    into.append(step("phase_major", "Transpose", into[-1].outputs[0], perm=[0, 3, 1, 2]))
    into.append(step("phases", "Reshape", into[-1].outputs[0], dims=[-1, channels, length // dilation]))
    output = conv.outputs[0]
    output.shape = None  # now (b*d, c_out, t_out/d)
    readers = list(output.uses())
    back = [step("phase_outputs", "Reshape", output, dims=[-1, dilation, out_channels, out_length // dilation])]
    back.append(step("steps_major", "Transpose", back[-1].outputs[0], perm=[0, 2, 3, 1]))
    back.append(step("steps", "Reshape", back[-1].outputs[0], dims=[0, out_channels, out_length]))
    for use in readers:
        use.node.replace_input_with(use.idx, back[-1].outputs[0])
    for made in into:
        graph.insert_before(conv, made)
    for made in reversed(back):
        graph.insert_after(conv, made)
    conv.replace_input_with(0, into[-1].outputs[0])
    conv.attributes["dilations"] = ir.AttrInt64s("dilations", [1])
    conv.attributes["pads"] = ir.AttrInt64s("pads", [left // dilation, right // dilation])
    return True


def lower_for_openvino(model: onnx.ModelProto, fp32_everywhere: bool, fp32_nodes: Iterable[str] = (),
                       scans: bool = True) -> tuple[onnx.ModelProto, dict[str, int]]:
    """A copy of ``model`` with every widely dilated convolution that runs in fp32 (every one when
    ``fp32_everywhere``, else those named in ``fp32_nodes``) on phases, and (``scans``) every
    ``SelectiveScan`` whose x, B and C come out of Mamba-2's causal depthwise convolution replaced by
    ``Mamba2Scan``, with its gated norm where it matches, and its input projection where that is narrow
    (``Mamba2ProjectedScan``, with the output projection after it where that matches), running backwards
    between a backward direction's time flips, and every bidirectional layer's directions summed (``fp32_nodes``
    allowing) and a linear edge lift folded into its first projections; returns the copy and how many
    convolutions (``phased_convolutions``), scans (``lowered_scans``), norms (``lowered_gated_norms``), input
    projections (``lowered_projections``), output projections (``lowered_out_projections``), flipped pairs
    (``reversed_scans``), summed layers (``summed_directions``) and folded lifts (``folded_lifts``) it rewrote."""
    lowered = ir.from_proto(model)
    graph = lowered.graph
    pinned = set(fp32_nodes)
    shapes = _static_shapes(model)
    counts = {"phased_convolutions": 0, "lowered_scans": 0, "lowered_gated_norms": 0, "lowered_projections": 0,
              "lowered_out_projections": 0, "reversed_scans": 0, "folded_lifts": 0, "summed_directions": 0}
    for conv in [n for n in graph if n.op_type == "Conv" and n.domain == "" and (fp32_everywhere or n.name in pinned)]:
        counts["phased_convolutions"] += _run_on_phases(graph, conv, shapes)
    for scan in [n for n in graph if scans and n.op_type == "SelectiveScan" and n.domain == "ai.onnx.contrib"]:
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
        projected = _project_inside(graph, fused, shapes) if norm is not None else None
        if projected is not None:
            counts["lowered_projections"] += 1
            counts["lowered_out_projections"] += _project_output_inside(graph, projected)
        if norm is not None:
            counts["reversed_scans"] += _run_backwards_inside(graph, projected or fused, shapes)
        if projected is not None:
            counts["folded_lifts"] += _fold_lift_inside(graph, projected, shapes)
    for concat in [n for n in graph if n.op_type == "Concat"]:
        counts["summed_directions"] += _sum_directions(graph, concat, None if fp32_everywhere else pinned)
    if counts["lowered_scans"]:
        lowered.opset_imports[LOWERED_DOMAIN] = 1
    return ir.to_proto(lowered), counts
