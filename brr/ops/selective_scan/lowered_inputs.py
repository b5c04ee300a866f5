"""The inputs of the OpenVINO extension's two scan operations, by name: ``lowered_inputs.def``, the table
that ``csrc/openvino.cpp`` compiles in, read here for the lowering that writes those nodes
(``brr/backends/openvino/lowering``). A node holds whole parts of its table, each only with the parts above
it."""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

TABLE = Path(__file__).with_name("lowered_inputs.def")
_ROW = re.compile(r"(?P<node>[A-Z_]+)_INPUT\((?P<name>\w+), (?P<part>\w+)\)")


class Part(Enum):
    """A group of inputs that a node holds together or not at all."""
    SCAN = "scan"
    CONVOLUTION = "convolution"
    NORM = "norm"
    BLOCK = "block"
    OUT_PROJECTION = "out_projection"


@dataclass(frozen=True)
class NodeInputs:
    """One operation's inputs in their order, each with its part."""
    names: tuple[str, ...]
    parts: tuple[Part, ...]

    def index(self, name: str) -> int:
        try:
            return self.names.index(name)
        except ValueError:
            raise KeyError(f"no input {name!r} in {self.names}") from None

    def names_of(self, part: Part) -> tuple[str, ...]:
        return tuple(name for name, of in zip(self.names, self.parts) if of is part)

    def part_order(self) -> tuple[Part, ...]:
        return tuple(dict.fromkeys(self.parts))


def parse_table(text: str, source: str = TABLE.name) -> dict[str, NodeInputs]:
    """The table's nodes by row prefix (``SCAN``, ``PROJECTED_SCAN``): every line a row or a comment, each
    node's parts contiguous, no name twice."""
    rows: dict[str, list[tuple[str, Part]]] = {}
    for number, line in enumerate(text.splitlines(), 1):
        row = line.split("//", 1)[0].strip()
        if not row:
            continue
        match = _ROW.fullmatch(row)
        if match is None:
            raise ValueError(f"{source}:{number}: not NODE_INPUT(name, part): {row!r}")
        try:
            part = Part(match["part"])
        except ValueError:
            raise ValueError(f"{source}:{number}: unknown part {match['part']!r}") from None
        rows.setdefault(match["node"], []).append((match["name"], part))
    table = {}
    for node, inputs in rows.items():
        names, parts = zip(*inputs)
        if len(set(names)) != len(names):
            raise ValueError(f"{source}: {node} names an input twice")
        if [p for i, p in enumerate(parts) if i == 0 or p is not parts[i - 1]] != list(dict.fromkeys(parts)):
            raise ValueError(f"{source}: {node}'s parts are not contiguous")
        table[node] = NodeInputs(names, parts)
    return table


_TABLE = parse_table(TABLE.read_text())
SCAN_INPUTS = _TABLE["SCAN"]                        # SelectiveScan: the custom node's, lowered Mamba2Scan's
PROJECTED_SCAN_INPUTS = _TABLE["PROJECTED_SCAN"]    # ProjectedSelectiveScan: lowered Mamba2ProjectedScan's
