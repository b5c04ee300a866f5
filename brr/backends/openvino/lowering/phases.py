"""Widely dilated convolutions of fp32 engines run on phases: a Conv1d of dilation d over a length divisible
by d is the undilated Conv1d over the d interleaved phases of its input stacked along the batch (why: the
package docstring). The new nodes take the convolution's name as a prefix, so that a precision plan that pins
the convolution pins them too."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from brr.backends.openvino.lowering.rewrite import Rewrite, Target, require

PHASE_DILATION = 64


def candidates(graph: ir.Graph, target: Target) -> list[ir.Node]:
    return [n for n in graph if n.op_type == "Conv" and n.domain == "" and target.runs_in_fp32(n)]


def _phase_layout(conv: ir.Node, shapes: dict[str, tuple[int | None, ...]]) -> tuple[int, int, int, int, int]:
    """(dilation, in channels, length, left pad, right pad) of a 1-D convolution worth running on phases."""
    attributes = conv.attributes
    source = shapes.get(conv.inputs[0].name)
    weight = shapes.get(conv.inputs[1].name) if len(conv.inputs) > 1 and conv.inputs[1] is not None else None
    require(not conv.outputs[0].is_graph_output(), "its output is a graph output")
    # Any batch; static channels, length and weight.
    require(source is not None and weight is not None and len(source) == 3 and len(weight) == 3,
            "not a 1-D convolution of known shapes")
    require(None not in (*source[1:], *weight), "its channels, length or weight shape are not static")
    (dilation,), (stride,) = attributes.get_ints("dilations", [1]), attributes.get_ints("strides", [1])
    pads = list(attributes.get_ints("pads", [0, 0]))
    _, channels, length = source
    require(dilation >= PHASE_DILATION, f"dilation {dilation} < {PHASE_DILATION}")
    require(stride == 1 and attributes.get_string("auto_pad", "NOTSET") == "NOTSET", "strided or auto-padded")
    require(length % dilation == 0, f"length {length} is no multiple of its dilation {dilation}")
    require(not any(p % dilation for p in pads), f"pads {pads} are no multiples of its dilation {dilation}")
    return dilation, channels, length, pads[0], pads[1]


def apply(graph: ir.Graph, conv: ir.Node, target: Target) -> None:
    # Under a bf16 hint OpenVINO stores a phased convolution's output in bf16 at its first reshape, whatever the
    # plan marks say, and a pinned layer after it computes on the rounded value: fp32 builds only.
    require(target.fp32_everywhere, "a reduced-precision build would store its phases' output in bf16")
    dilation, channels, length, left, right = _phase_layout(conv, target.shapes)
    out_channels, _, taps = target.shapes[conv.inputs[1].name]
    out_length = length + left + right - dilation * (taps - 1)

    def step(name: str, op_type: str, source: ir.Value, dims: list[int] | None = None,
             perm: list[int] | None = None) -> ir.Node:
        inputs = [source]
        if dims is not None:
            inputs.append(ir.Value(name=f"{conv.name}/{name}_shape",
                                   const_value=ir.tensor(np.array(dims, np.int64))))
            graph.register_initializer(inputs[-1])
        made = ir.Node("", op_type, inputs, attributes=[ir.AttrInt64s("perm", perm)] if perm else [],
                       name=f"{conv.name}/{name}", num_outputs=1)
        made.outputs[0].name = made.name
        return made

    # (b, c, t) -> (b, c, t/d, d) -> (b, d, c, t/d) -> (b*d, c, t/d), and the inverse after the convolution.
    into = [step("steps_by_phase", "Reshape", conv.inputs[0],
                 dims=[0, channels, length // dilation, dilation])]
    into.append(step("phase_major", "Transpose", into[-1].outputs[0], perm=[0, 3, 1, 2]))
    into.append(step("phases", "Reshape", into[-1].outputs[0], dims=[-1, channels, length // dilation]))
    output = conv.outputs[0]
    output.shape = None  # now (b*d, c_out, t_out/d)
    readers = list(output.uses())
    back = [step("phase_outputs", "Reshape", output,
                 dims=[-1, dilation, out_channels, out_length // dilation])]
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


REWRITE = Rewrite("phased_convolutions", candidates, apply, needs_extension=False)
