"""Each rewrite of OpenVINO's lowering on a handmade tiny bidirectional Mamba-2 layer, written as the exporter
writes one: what it rewrites, that OpenVINO then computes the same numbers through brr's extension, and the
debug line that says why it declines a candidate. Also the input table that the lowering and the extension
share. (Phases: test_openvino_phases.py; whole models: tests/export/test_export.py.)"""

from __future__ import annotations

import functools
import logging

import numpy as np
import onnx
import openvino as ov
import pytest
from onnx import TensorProto, helper, numpy_helper

from brr.backends.openvino.loader import compile_model
from brr.backends.openvino.lowering import (
    PASSES,
    PROJECTED_MAX_FEATURES,
    gated_norm,
    in_projection,
    lift,
    lower_for_openvino,
    out_projection,
    reversal,
    scan_convolution,
    summed_directions,
)
from brr.backends.openvino.lowering.nodes import LOWERED_DOMAIN, PROJECTED_SCAN, SCAN
from brr.ops import registry, selective_scan
from brr.ops.selective_scan.lowered_inputs import PROJECTED_SCAN_INPUTS, SCAN_INPUTS, Part, parse_table

LENGTH, HEADS, HEADDIM, STATE, WIDTH = 16, 2, 4, 4, 4
INNER = HEADS * HEADDIM
NARROW, WIDE = 4, PROJECTED_MAX_FEATURES + 4
LIFT_LIMIT = 3.0


class _Graph:
    """Nodes and initializers of a handmade graph; each node's output is named after the node."""

    def __init__(self):
        self.rng = np.random.default_rng(0)
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.value_info: list[onnx.ValueInfoProto] = []

    def const(self, name: str, array: np.ndarray) -> str:
        self.initializers.append(numpy_helper.from_array(array, name))
        return name

    def weight(self, name: str, *shape: int, scale: float = 0.5) -> str:
        return self.const(name, (scale * self.rng.standard_normal(shape)).astype(np.float32))

    def node(self, op_type: str, inputs: list[str], name: str, domain: str = "", **attributes) -> str:
        self.nodes.append(helper.make_node(op_type, inputs, [name], name=name, domain=domain, **attributes))
        return name

    def flip(self, value: str, name: str) -> str:
        """torch.flip along l, as the exporter writes it."""
        bounds = [self.const(f"{name}.{k}", np.array([v], np.int64))
                  for k, v in (("starts", -1), ("ends", np.iinfo(np.int64).min), ("axes", 1), ("steps", -1))]
        return self.node("Slice", [value, *bounds], name)

    def block(self, u: str, p: str, features: int) -> str:
        """Mamba-2 (brr.model.mamba2.Mamba2) of u (b, l, features): its output projection's output."""
        z = self.node("MatMul", [u, self.weight(f"{p}.in_z", features, INNER)], f"{p}/z")

        def conv_silu(name: str, channels: int) -> str:
            in_weight = self.weight(f"{p}.in_{name}", features, channels)
            raw = self.node("MatMul", [u, in_weight], f"{p}/{name}_proj")
            forth = self.node("Transpose", [raw], f"{p}/{name}_forth", perm=[0, 2, 1])
            conv = self.node("Conv", [forth, self.weight(f"{p}.conv_{name}", channels, 1, WIDTH),
                                      self.weight(f"{p}.conv_{name}_bias", channels)],
                             f"{p}/{name}_conv", group=channels, pads=[WIDTH - 1, 0], kernel_shape=[WIDTH])
            gate = self.node("Sigmoid", [conv], f"{p}/{name}_sigmoid")
            silu = self.node("Mul", [conv, gate], f"{p}/{name}_silu")
            return self.node("Transpose", [silu], f"{p}/{name}_back", perm=[0, 2, 1])

        x_shape = self.const(f"{p}.x_shape", np.array([0, 0, HEADS, HEADDIM]))
        x = self.node("Reshape", [conv_silu("x", INNER), x_shape], f"{p}/x")
        B, C = (self.node("Unsqueeze", [conv_silu(n, STATE), self.const(f"{p}.{n}_axes", np.array([2]))],
                          f"{p}/{n}") for n in ("B", "C"))
        dt = self.node("MatMul", [u, self.weight(f"{p}.in_dt", features, HEADS)], f"{p}/dt")
        A = self.const(f"{p}.A", -np.linspace(1, 4, HEADS).astype(np.float32))
        y = self.node(selective_scan.OP_TYPE, [x, dt, A, B, C, self.weight(f"{p}.D", HEADS),
                                               self.weight(f"{p}.dt_bias", HEADS)],
                      f"{p}/scan", domain=selective_scan.DOMAIN, dt_softplus=1, chunk_size=8,
                      plugin_namespace=selective_scan.PLUGIN_NAMESPACE,
                      plugin_version=selective_scan.PLUGIN_VERSION)
        # The exporter writes the scan's shape, which shape inference cannot know.
        self.value_info.append(helper.make_tensor_value_info(y, TensorProto.FLOAT,
                                                             ["batch", LENGTH, HEADS, HEADDIM]))
        y = self.node("Reshape", [y, self.const(f"{p}.y_shape", np.array([0, 0, INNER]))], f"{p}/y")
        silu = self.node("Mul", [z, self.node("Sigmoid", [z], f"{p}/z_sigmoid")], f"{p}/z_silu")
        g = self.node("Mul", [y, silu], f"{p}/gated")
        square = self.node("Pow", [g, self.const(f"{p}.two", np.float32(2))], f"{p}/square")
        last = self.const(f"{p}.last", np.array([-1]))
        mean = self.node("ReduceMean", [square, last], f"{p}/mean", keepdims=1)
        shifted = self.node("Add", [mean, self.const(f"{p}.eps", np.float32(1e-5))], f"{p}/eps")
        rms = self.node("Sqrt", [shifted], f"{p}/rms")
        normed = self.node("Mul", [g, self.node("Reciprocal", [rms], f"{p}/inverse")], f"{p}/scaled")
        normed = self.node("Mul", [normed, self.weight(f"{p}.norm", INNER)], f"{p}/normed")
        return self.node("MatMul", [normed, self.weight(f"{p}.out", INNER, features)], f"{p}/out")

    def layer(self, u: str, features: int) -> str:
        """brr.model.mamba2.BidirectionalMamba2 without its residual and LayerNorm."""
        backward = self.flip(self.block(self.flip(u, "flip_in"), "bwd", features), "flip_out")
        both = self.node("Concat", [self.block(u, "fwd", features), backward], "directions", axis=-1)
        merged = self.node("MatMul", [both, self.weight("merge.weight", 2 * features, features)], "merge")
        return self.node("Add", [merged, self.weight("merge.bias", features)], "merged")

    def model(self, inputs: dict[str, int], outputs: list[str]) -> onnx.ModelProto:
        """Inputs (batch, LENGTH, features) by name; outputs by name, the first the model's."""
        graph = helper.make_graph(
            self.nodes, "tiny", [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", LENGTH, f])
                                 for n, f in inputs.items()],
            [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in outputs], self.initializers,
            value_info=self.value_info)
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18),
                                                       helper.make_opsetid(selective_scan.DOMAIN, 1)])


def _layer(features: int, probes: tuple[str, ...] = (), lift_scale: float | None = None,
           copied: tuple[str, ...] = ()) -> onnx.ModelProto:
    """One bidirectional layer of u, or with ``lift_scale`` of the lift Clip(s w) of a clamped scalar s, w's
    largest magnitude ``lift_scale`` (the lift's clamp binds where that exceeds LIFT_LIMIT). ``probes`` are
    values made graph outputs too; ``copied`` values are read by an Identity whose output is one."""
    g = _Graph()
    if lift_scale is None:
        output = g.layer("u", features)
        copies = [g.node("Identity", [value], f"{value}_copy") for value in copied]
        return g.model({"u": features}, [output, *probes, *copies])
    s = g.node("Clip", ["s", g.const("s_low", np.float32(-1)), g.const("s_high", np.float32(1))], "s_clamped")
    w = g.rng.uniform(-1, 1, (1, features)).astype(np.float32)
    w *= lift_scale / np.abs(w).max()
    lifted = g.node("MatMul", [s, g.const("lift.weight", w)], "lift")
    u = g.node("Clip", [lifted, g.const("lift_low", np.float32(-LIFT_LIMIT)),
                        g.const("lift_high", np.float32(LIFT_LIMIT))], "lifted")
    return g.model({"s": 1}, [g.layer(u, features), *probes])


@functools.cache
def _core() -> ov.Core:
    core = ov.Core()
    core.add_extension(str(registry.openvino_extension()))
    return core


def _run(model: onnx.ModelProto, directory, feeds: dict[str, np.ndarray]) -> np.ndarray:
    """The model's first output on OpenVINO (fp32), its ONNX read with brr's extension."""
    path = directory / f"model_{len(list(directory.iterdir()))}.onnx"
    onnx.save(model, str(path))
    return compile_model(_core(), str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})(feeds)[0]


def _feeds(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    return {i.name: rng.standard_normal((3, LENGTH, i.type.tensor_type.shape.dim[2].dim_value))
            .astype(np.float32) for i in model.graph.input}


def _passes_through(rewrite) -> list:
    """The passes up to ``rewrite``'s, which finds the nodes the ones before it write."""
    return list(PASSES[:PASSES.index(rewrite.REWRITE) + 1])


def _lowered_by(model: onnx.ModelProto, rewrite, caplog, **options) -> tuple[onnx.ModelProto, dict[str, int]]:
    caplog.set_level(logging.DEBUG, logger=rewrite.__name__)
    return lower_for_openvino(model, fp32_everywhere=True, passes=_passes_through(rewrite), **options)


def _ops(model: onnx.ModelProto) -> list[str]:
    return [n.op_type for n in model.graph.node]


def _declined(caplog, rewrite, reason: str) -> bool:
    return any(r.name == rewrite.__name__ and r.levelno == logging.DEBUG and reason in r.getMessage()
               for r in caplog.records)


def _same_numbers(model: onnx.ModelProto, lowered: onnx.ModelProto, tmp_path):
    feeds = _feeds(model)
    np.testing.assert_allclose(_run(lowered, tmp_path, feeds), _run(model, tmp_path, feeds),
                               rtol=1e-4, atol=1e-5)


def _node(model: onnx.ModelProto, name: str) -> onnx.NodeProto:
    return next(n for n in model.graph.node if n.name == name)


def _input(kind, node: onnx.NodeProto, name: str) -> str:
    return node.input[kind.inputs.index(name)]


def _holds(kind, node: onnx.NodeProto, part: Part) -> bool:
    return kind.inputs.index(kind.inputs.names_of(part)[0]) < len(node.input)


# The input table --------------------------------------------------------------------------------------------

def test_the_table_names_the_custom_nodes_inputs_and_each_part_once():
    assert SCAN_INPUTS.names_of(Part.SCAN) == selective_scan.INPUT_NAMES
    assert SCAN_INPUTS.part_order() == (Part.SCAN, Part.CONVOLUTION, Part.NORM)
    assert PROJECTED_SCAN_INPUTS.part_order() == (Part.BLOCK, Part.OUT_PROJECTION)
    # The block's inputs that are not its own projection's are the lowered scan's, under the same names.
    assert set(PROJECTED_SCAN_INPUTS.names_of(Part.BLOCK)) - set(SCAN_INPUTS.names) == {"u", "in_proj_weight"}


@pytest.mark.parametrize("text, error", [
    ("SCAN_INPUT(x, scan)\nSCAN_INPUT(x, scan)", "names an input twice"),
    ("SCAN_INPUT(x, scan)\nSCAN_INPUT(z, norm)\nSCAN_INPUT(dt, scan)", "not contiguous"),
    ("SCAN_INPUT(x, scan) // fine\nSCAN_INPUT(x scan)", ":2: not NODE_INPUT"),
    ("SCAN_INPUT(x, scans)", "unknown part 'scans'"),
])
def test_a_malformed_table_is_refused(text, error):
    with pytest.raises(ValueError, match=error):
        parse_table(text)


def test_a_node_is_made_of_whole_parts_only():
    import onnx_ir as ir

    values = {name: ir.Value(name=name) for name in SCAN_INPUTS.names}
    made = SCAN.make("scan", {n: values[n] for n in SCAN_INPUTS.names[::-1]}, [])  # any order given
    assert [v.name for v in made.inputs] == list(SCAN_INPUTS.names) and SCAN.holds(made, Part.NORM)
    with pytest.raises(ValueError, match="whole parts"):
        SCAN.make("scan", {n: values[n] for n in SCAN_INPUTS.names if n != "x_conv_bias"}, [])
    with pytest.raises(ValueError, match="whole parts"):  # the norm without the convolution
        SCAN.make("scan", {n: values[n] for n in (*SCAN_INPUTS.names_of(Part.SCAN),
                                                  *SCAN_INPUTS.names_of(Part.NORM))}, [])


# The rewrites, in their order -------------------------------------------------------------------------------

def test_scan_convolution_moves_the_three_convolutions_into_the_scan(caplog, tmp_path):
    model = _layer(WIDE)
    lowered, counts = _lowered_by(model, scan_convolution, caplog)
    assert counts["lowered_scans"] == 2
    assert "Conv" not in _ops(lowered) and "Transpose" not in _ops(lowered)
    scan = _node(lowered, "fwd/scan")
    assert (scan.domain, scan.op_type) == (SCAN.domain, SCAN.op_type)
    assert _holds(SCAN, scan, Part.CONVOLUTION) and not _holds(SCAN, scan, Part.NORM)  # the next rewrite's
    assert [_input(SCAN, scan, n) for n in ("x", "x_conv_weight", "B_conv_bias", "C_conv_weight")] == \
        ["fwd/x", "fwd.conv_x", "fwd.conv_B_bias", "fwd.conv_C"]
    assert _node(lowered, "fwd/x").input[0] == "fwd/x_proj"  # the Reshape now reads the projection itself
    _same_numbers(model, lowered, tmp_path)


@pytest.mark.parametrize("probe, reason", [
    ("fwd/B_conv", "B's SiLU does not read a node's output read only there"),
    ("fwd/x_back", "x's Reshape does not read a Transpose(0, 2, 1) read only there"),
])
def test_scan_convolution_declines_a_chain_read_elsewhere(probe, reason, caplog):
    model = _layer(WIDE, probes=(probe,))
    lowered, counts = _lowered_by(model, scan_convolution, caplog)
    assert counts["lowered_scans"] == 1 and _node(lowered, "fwd/scan").domain == selective_scan.DOMAIN
    assert _declined(caplog, scan_convolution, reason)


def test_gated_norm_moves_the_norm_into_the_scan(caplog, tmp_path):
    model = _layer(WIDE)
    lowered, counts = _lowered_by(model, gated_norm, caplog)
    assert counts["lowered_gated_norms"] == 2 and not {"ReduceMean", "Sqrt", "Sigmoid"} & set(_ops(lowered))
    scan = _node(lowered, "fwd/scan")
    assert (_input(SCAN, scan, "z"), _input(SCAN, scan, "norm_weight")) == ("fwd/z", "fwd.norm")
    assert next(a.f for a in scan.attribute if a.name == "norm_eps") == pytest.approx(1e-5)
    assert _node(lowered, "fwd/out").input[0] == "fwd/y"  # the output projection reads the normalised output
    _same_numbers(model, lowered, tmp_path)


def test_gated_norm_declines_a_norm_whose_output_is_a_graph_output(caplog):
    lowered, counts = _lowered_by(_layer(WIDE, probes=("fwd/normed",)), gated_norm, caplog)
    assert counts["lowered_gated_norms"] == 1 and "ReduceMean" in _ops(lowered)
    assert _declined(caplog, gated_norm, "its output is a graph output")


def test_in_and_out_projection_move_a_narrow_blocks_projections_into_it(caplog, tmp_path):
    model = _layer(NARROW)
    lowered, counts = _lowered_by(model, out_projection, caplog)
    assert counts["lowered_projections"] == counts["lowered_out_projections"] == 2
    projected = _node(lowered, "fwd/scan")
    assert _holds(PROJECTED_SCAN, projected, Part.OUT_PROJECTION)
    assert (_input(PROJECTED_SCAN, projected, "u"), _input(PROJECTED_SCAN, projected, "out_proj_weight")) == \
        ("u", "fwd.out")
    weight = next(numpy_helper.to_array(i) for i in lowered.graph.initializer
                  if i.name == _input(PROJECTED_SCAN, projected, "in_proj_weight"))
    assert weight.shape == (NARROW, 2 * INNER + 2 * STATE + HEADS)  # [z | x | B | C | dt]
    assert projected.output[0] == "fwd/out"  # under the output projection's name
    assert _ops(lowered).count("MatMul") == 1  # the combining one
    _same_numbers(model, lowered, tmp_path)


def test_in_projection_declines_a_wide_block(caplog):
    lowered, counts = _lowered_by(_layer(WIDE), in_projection, caplog)
    assert counts["lowered_projections"] == 0 and _ops(lowered).count(SCAN.op_type) == 2
    assert _declined(caplog, in_projection, f"{WIDE} input features, more than {PROJECTED_MAX_FEATURES}")


def test_out_projection_declines_one_whose_output_is_a_graph_output(caplog):
    lowered, counts = _lowered_by(_layer(NARROW, probes=("fwd/out",)), out_projection, caplog)
    assert counts["lowered_out_projections"] == 1 and "fwd/out" in [n.name for n in lowered.graph.node]
    assert _declined(caplog, out_projection, "the MatMul's output is a graph output")


@pytest.mark.parametrize("features", [NARROW, WIDE])
def test_reversal_runs_the_backward_direction_backwards_in_the_kernel(features, caplog, tmp_path):
    model = _layer(features)
    lowered, counts = _lowered_by(model, reversal, caplog)
    assert counts["reversed_scans"] == 1 and "Slice" not in _ops(lowered)
    assert [next((a.i for a in _node(lowered, f"{d}/scan").attribute if a.name == "reversed"), 0)
            for d in ("fwd", "bwd")] == [0, 1]
    # The forward direction's output reaches the Concat, not a flip.
    assert _declined(caplog, reversal, "directions (Concat) between it and a flip does not act on each step")
    _same_numbers(model, lowered, tmp_path)


@pytest.mark.parametrize("features, read, reason", [
    (NARROW, "flip_in", "its u is not a flip read only there"),
    (WIDE, "flip_in", "its input projections do not read one flip read only by them"),
    (WIDE, "bwd/out", "is not read by one node: no flip back"),
])
def test_reversal_declines_a_flip_read_elsewhere(features, read, reason, caplog):
    lowered, counts = _lowered_by(_layer(features, copied=(read,)), reversal, caplog)
    assert counts["reversed_scans"] == 0 and _ops(lowered).count("Slice") == 2
    assert _declined(caplog, reversal, reason)


def test_lift_projects_the_scalar_where_the_lift_cannot_clip(caplog, tmp_path):
    model = _layer(NARROW, lift_scale=0.9 * LIFT_LIMIT)
    lowered, counts = _lowered_by(model, lift, caplog)
    assert counts["folded_lifts"] == 2
    for direction in ("fwd", "bwd"):
        projected = _node(lowered, f"{direction}/scan")
        assert _input(PROJECTED_SCAN, projected, "u") == "s_clamped"
        folded = _input(PROJECTED_SCAN, projected, "in_proj_weight")
        assert folded == f"{direction}/scan/lifted_in_proj_weight"
    unfolded = {f"{direction}/scan/in_proj_weight" for direction in ("fwd", "bwd")}
    assert unfolded.isdisjoint(i.name for i in lowered.graph.initializer)
    _same_numbers(model, lowered, tmp_path)


def test_lift_declines_a_lift_whose_clamp_may_bind(caplog):
    lowered, counts = _lowered_by(_layer(NARROW, lift_scale=1.5 * LIFT_LIMIT), lift, caplog)
    assert counts["folded_lifts"] == 0 and _input(PROJECTED_SCAN, _node(lowered, "fwd/scan"), "u") == "lifted"
    assert _declined(caplog, lift, "the lift's clamp may bind")


@pytest.mark.parametrize("features", [NARROW, WIDE])
def test_summed_directions_absorb_the_combining_matmul(features, caplog, tmp_path):
    model = _layer(features)
    lowered, counts = _lowered_by(model, summed_directions, caplog)
    assert counts["summed_directions"] == 1 and not {"Concat"} & set(_ops(lowered))
    assert "merge" not in [n.name for n in lowered.graph.node]
    assert _node(lowered, "merge/sum_0").op_type == "Add"
    _same_numbers(model, lowered, tmp_path)


def test_summed_directions_decline_a_combining_matmul_pinned_apart(caplog):
    model = _layer(WIDE)
    pinned = {"fp32_everywhere": False, "fp32_nodes": ["merge"]}
    caplog.set_level(logging.DEBUG, logger=summed_directions.__name__)
    lowered, counts = lower_for_openvino(model, passes=_passes_through(summed_directions), **pinned)
    assert counts["summed_directions"] == 0 and "Concat" in _ops(lowered)
    assert _declined(caplog, summed_directions, "pins some of the MatMul and the parts' projections, not all")
    _, counts = lower_for_openvino(model, fp32_everywhere=True, fp32_nodes=["merge"])
    assert counts["summed_directions"] == 1


def test_standard_op_graphs_skip_the_rewrites_that_need_the_extension():
    lowered, counts = lower_for_openvino(_layer(NARROW), fp32_everywhere=True, scans=False)
    assert set(counts) == {rewrite.setting for rewrite in PASSES}
    assert not any(counts[r.setting] for r in PASSES if r.needs_extension)
    assert selective_scan.OP_TYPE in _ops(lowered)
    assert LOWERED_DOMAIN not in {o.domain for o in lowered.opset_import}
