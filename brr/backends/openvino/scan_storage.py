"""Scans that read and write bf16 where OpenVINO stores the tensors around them in bf16 anyway.

Under a bf16 hint the CPU plugin runs the extension's scans (custom operations, typed by the IR) on the IR's
fp32 tensors: around each it converts the bf16 tensors that the projections before it write to fp32, and its
fp32 output back to bf16 for the projections after it. Those reorders are memory-bound copies, about 20 ms of
v3's node stream a window on a 2-core AMX Xeon (an eighth of its per-window rest). The kernels read and write
bf16 themselves (fp32 arithmetic inside), so a scan whose every activation input reaches it from a bf16 tensor
and whose output every consumer converts to bf16 is typed bf16 in the IR: the same values reach it and leave
it, without the copies. A scan that reads an fp32 tensor (the edge stream's, after the fp32 edge similarity)
or that a precision plan pins keeps fp32; so does every scan of an fp32 engine or on a CPU without bf16.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

import openvino as ov
import openvino.opset13 as opset

from brr.ops.selective_scan.lowered_inputs import PROJECTED_SCAN_INPUTS, SCAN_INPUTS

# The extension's operations and the inputs of each that carry activations (the others are parameters).
ACTIVATION_INPUTS = {
    "SelectiveScan": tuple(SCAN_INPUTS.index(name) for name in ("x", "dt", "B", "C", "z")),
    "ProjectedSelectiveScan": (PROJECTED_SCAN_INPUTS.index("u"),),
}


@dataclass(frozen=True)
class ScanNeighbours:
    """How the compiled model moves one scan's tensors: per activation input it has, whether the tensor is
    stored in bf16 (it reaches the scan through a bf16 -> f32 reorder), and whether every consumer of its
    output converts it to bf16."""

    name: str
    inputs_stored_in_bf16: tuple[bool, ...]
    output_read_in_bf16: bool

    @property
    def bf16_for_free(self) -> bool:
        return all(self.inputs_stored_in_bf16) and self.output_read_in_bf16


def scan_neighbours(model: ov.Model, compiled: ov.CompiledModel) -> list[ScanNeighbours]:
    """Each scan of ``model`` (the IR ``compiled`` was compiled from) as the compiled model runs it."""
    scans = {op.get_friendly_name(): ACTIVATION_INPUTS[op.get_type_name()] for op in model.get_ordered_ops()
             if op.get_type_name() in ACTIVATION_INPUTS}
    found = []
    for op in compiled.get_runtime_model().get_ordered_ops():
        if op.get_friendly_name() not in scans:
            continue
        inputs = tuple(_reorder_from_bf16(op.input_value(i).get_node())
                       for i in scans[op.get_friendly_name()] if i < op.get_input_size())
        consumers = [target.get_node() for target in op.output(0).get_target_inputs()]
        read_in_bf16 = bool(consumers) and all(_is_reorder(c) and c.get_output_element_type(0) == ov.Type.bf16
                                               for c in consumers)
        found.append(ScanNeighbours(op.get_friendly_name(), inputs, read_in_bf16))
    return found


def _is_reorder(node: ov.Node) -> bool:
    return node.get_rt_info()["layerType"].astype(str) == "Reorder"


def _reorder_from_bf16(node: ov.Node) -> bool:
    return _is_reorder(node) and node.get_input_element_type(0) == ov.Type.bf16


def store_scans_in_bf16(model: ov.Model, names: Collection[str]) -> int:
    """Type the scans ``names`` of ``model`` bf16: their activation inputs converted to bf16, their output
    converted back to fp32 for the graph as it was. Returns how many were."""
    done = 0
    for op in model.get_ordered_ops():
        name = op.get_friendly_name()
        if name not in names or op.get_type_name() not in ACTIVATION_INPUTS:
            continue
        for index in ACTIVATION_INPUTS[op.get_type_name()]:
            if index < op.get_input_size():
                to_bf16 = opset.convert(op.input_value(index), ov.Type.bf16, name=f"{name}/bf16_input_{index}")
                op.input(index).replace_source_output(to_bf16.output(0))
        op.validate_and_infer_types()
        consumers = list(op.output(0).get_target_inputs())
        to_fp32 = opset.convert(op.output(0), ov.Type.f32, name=f"{name}/fp32_output")
        for consumer in consumers:
            consumer.replace_source_output(to_fp32.output(0))
        done += 1
    model.validate_nodes_and_infer_types()
    return done
