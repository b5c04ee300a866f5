"""The nodes that the lowering writes, for brr's OpenVINO extension to convert, and the custom node it starts
from; each one's inputs addressed by name, from the table that the extension compiles in
(``brr/ops/selective_scan/lowered_inputs.def``)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import onnx_ir as ir

from brr.ops import selective_scan
from brr.ops.selective_scan.lowered_inputs import PROJECTED_SCAN_INPUTS, SCAN_INPUTS, NodeInputs, Part

LOWERED_DOMAIN = "brr.openvino"


@dataclass(frozen=True)
class ScanNode:
    """One kind of node: its domain and op type, and its inputs' table."""
    domain: str
    op_type: str
    inputs: NodeInputs

    def is_one(self, node: ir.Node | None) -> bool:
        return node is not None and node.domain == self.domain and node.op_type == self.op_type

    def input(self, node: ir.Node, name: str) -> ir.Value | None:
        index = self.inputs.index(name)
        return node.inputs[index] if index < len(node.inputs) else None

    def holds(self, node: ir.Node, part: Part) -> bool:
        return self.inputs.index(self.inputs.names_of(part)[0]) < len(node.inputs)

    def make(self, name: str, values: Mapping[str, ir.Value | None],
             attributes: Iterable[ir.Attr]) -> ir.Node:
        """The node ``name`` of the inputs ``values`` (by name: whole parts, from the first)."""
        ordered = self._whole_parts(values)
        return ir.Node(self.domain, self.op_type, [values[n] for n in ordered], attributes=list(attributes),
                       name=name, num_outputs=1)

    def extend(self, node: ir.Node, values: Mapping[str, ir.Value]) -> None:
        """Give ``node`` the inputs ``values`` (by name: the part after those it holds)."""
        held = self.inputs.names[:len(node.inputs)]
        if set(held) & set(values):
            raise ValueError(f"{node.name} holds {sorted(set(held) & set(values))} already")
        ordered = self._whole_parts([*held, *values])
        node.resize_inputs(len(ordered))
        for index in range(len(held), len(ordered)):
            node.replace_input_with(index, values[ordered[index]])

    def _whole_parts(self, names: Iterable[str]) -> tuple[str, ...]:
        given, parts = set(names), self.inputs.part_order()
        for count in range(len(parts) + 1):
            ordered = tuple(n for part in parts[:count] for n in self.inputs.names_of(part))
            if set(ordered) == given:
                return ordered
        raise ValueError(f"{self.op_type} holds whole parts {[p.value for p in parts]} of "
                         f"{self.inputs.names} from the first, not {sorted(given)}")


# The exporter's custom node (the extension converts it too); its inputs are the scan part of SelectiveScan's.
CUSTOM_SCAN = ScanNode(selective_scan.DOMAIN, selective_scan.OP_TYPE, SCAN_INPUTS)
# The scan with its convolution (Part.CONVOLUTION), and its gated norm (Part.NORM) where that lowered too.
SCAN = ScanNode(LOWERED_DOMAIN, "Mamba2Scan", SCAN_INPUTS)
# The whole block but its residual (Part.BLOCK), and its output projection (Part.OUT_PROJECTION) where that
# lowered too.
PROJECTED_SCAN = ScanNode(LOWERED_DOMAIN, "Mamba2ProjectedScan", PROJECTED_SCAN_INPUTS)
