"""What one fp32 run tells: every tensor's range against the reduced precision's limits.

The fp32 pass runs the fp32 graph once per calibration window, instrumented (``brr.onnx.statistics``:
every float tensor of the top-level graph reduced in-graph to its sum of squares, max and min), and
keeps per tensor only its largest finite magnitude over the windows and the window where it lies
entirely below the smallest normal with the smallest magnitude. Two hazards are certain from that
alone, before any reduced-precision run:

- overflow: a tensor whose fp32 values exceed the precision's largest finite value (fp16: 65504) is
  inf once stored. Its producer is pinned, and so is every consumer: a pinned node's output still
  reaches a reduced-precision consumer through a cast to the precision.
- underflow: a tensor lying entirely below the precision's smallest normal (fp16: 6.1e-5) keeps few
  or no digits once stored, down to 0; a node dividing by it, taking its log or a negative power
  turns that into inf/NaN or a large error. That node and the tensor's producer are pinned (the
  producer, so that the value reaches its consumer in fp32).

Each pin carries its evidence: the tensor, its fp32 magnitude, the limit, the window.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from brr.diff.results import PRECISION_LIMITS
from brr.onnx.statistics import TensorRange

FOUND_BY = "fp32 statistics"
# (op type, input position) where a value flushed to zero gives inf or NaN; Pow only for negative exponents.
ZERO_SENSITIVE_INPUTS = {("Div", 1), ("Reciprocal", 0), ("Log", 0), ("Pow", 0), ("Mod", 1)}


@dataclass(frozen=True)
class Extreme:
    """A tensor's most extreme fp32 magnitude over the windows, and the window where it was seen."""

    magnitude: float
    window: str


@dataclass(frozen=True)
class RangePin:
    node: str
    op_type: str
    reason: str  # "overflow", "overflow_consumer", "underflow", "underflow_producer"
    window: str
    evidence: dict


class Fp32Ranges:
    """Per tensor: the largest finite fp32 magnitude (``peaks``) and, where it lies entirely below
    ``smallest_normal`` on some window without being all zeros, the smallest such magnitude (``below_normal``).
    Memory: two small records per tensor, whatever the number of windows."""

    def __init__(self, smallest_normal: float):
        self.smallest_normal = smallest_normal
        self.peaks: dict[str, Extreme] = {}
        self.below_normal: dict[str, Extreme] = {}
        self.windows = 0

    def add(self, window: str, ranges: dict[str, TensorRange]) -> None:
        self.windows += 1
        for name, r in ranges.items():
            if not r.finite or r.size == 0:
                continue
            magnitude = r.abs_max
            if name not in self.peaks or magnitude > self.peaks[name].magnitude:
                self.peaks[name] = Extreme(magnitude, window)
            if 0 < magnitude < self.smallest_normal and (
                    name not in self.below_normal or magnitude < self.below_normal[name].magnitude):
                self.below_normal[name] = Extreme(magnitude, window)


def reads(node: onnx.NodeProto) -> list[str]:
    """Every tensor name ``node`` reads, including those its subgraphs read from the enclosing scope
    (names inside a subgraph cannot shadow outer ones, so anything produced outside counts)."""
    names = [i for i in node.input if i]
    for attribute in node.attribute:
        for graph in [attribute.g] if attribute.HasField("g") else list(attribute.graphs):
            for inner in graph.node:
                names.extend(reads(inner))
    return names


def range_pins(model: onnx.ModelProto, ranges: Fp32Ranges, precision: str, pinnable: set[str]) -> list[RangePin]:
    """The pins the fp32 ranges make certain (module docstring), in node order, each node once."""
    largest, normal, _ = PRECISION_LIMITS[precision]
    nodes = list(model.graph.node)
    producer = {out: n for n in nodes for out in n.output}
    consumers: dict[str, list[tuple[onnx.NodeProto, int | None]]] = {}
    for node in nodes:
        for index, name in enumerate(node.input):
            consumers.setdefault(name, []).append((node, index))
        for name in set(reads(node)) - set(node.input):
            consumers.setdefault(name, []).append((node, None))  # read inside a subgraph
    constants = _constant_values(model)
    pins: dict[str, RangePin] = {}

    def pin(node: onnx.NodeProto, reason: str, extreme: Extreme, evidence: dict) -> None:
        if node.name in pinnable and node.name not in pins and node.op_type != "Cast":
            pins[node.name] = RangePin(node.name, node.op_type, reason, extreme.window,
                                       {"found_by": FOUND_BY, "window": extreme.window} | evidence)

    overflows = [(name, peak) for name, peak in ranges.peaks.items() if peak.magnitude > largest and name in producer]
    for name, peak in overflows:  # producers first: a node whose own output overflows is pinned for that
        made_by = producer[name]
        pin(made_by, "overflow", peak, {
            "tensor": name, "fp32_abs_max": peak.magnitude, "limit": largest, "cause": "overflow",
            "explanation": f"overflow: {made_by.op_type} output {name} reaches {peak.magnitude:.3g} in fp32 on "
                           f"{peak.window}, beyond {precision}'s largest finite {largest:g}: stored in {precision} "
                           "it is inf"})
    for name, peak in overflows:
        made_by = producer[name]
        for user, _ in consumers.get(name, []):
            pin(user, "overflow_consumer", peak, {
                "tensor": name, "fp32_abs_max": peak.magnitude, "limit": largest, "cause": "overflow",
                "explanation": f"overflow: reads {name} ({made_by.op_type} {made_by.name}), which reaches "
                               f"{peak.magnitude:.3g} in fp32 on {peak.window}, beyond {precision}'s largest finite "
                               f"{largest:g}: in {precision} it would read inf"})
    for name, low in ranges.below_normal.items():
        for user, index in consumers.get(name, []):
            if (user.op_type, index) not in ZERO_SENSITIVE_INPUTS:
                continue
            if user.op_type == "Pow" and not _may_be_negative(user.input[1], constants):
                continue
            facts = {"tensor": name, "fp32_abs_max": low.magnitude, "limit": normal, "cause": "underflow"}
            below = (f"lies entirely below {precision}'s smallest normal {normal:.2g} in fp32 on {low.window} "
                     f"(|x| <= {low.magnitude:.2g})")
            pin(user, "underflow", low, facts | {
                "explanation": f"underflow: {user.op_type} takes {name}, which {below}: stored in {precision} it "
                               f"loses its digits or flushes to 0, and the {user.op_type} goes inf/NaN or far off"})
            if name in producer:
                pin(producer[name], "underflow_producer", low, facts | {
                    "explanation": f"underflow: makes {name}, which {user.op_type} {user.name} takes and which "
                                   f"{below}"})
    order = {n.name: i for i, n in enumerate(nodes)}
    return sorted(pins.values(), key=lambda p: order[p.node])


def _constant_values(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    values = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant":
            value = next((a for a in node.attribute if a.name in ("value", "value_float", "value_floats")), None)
            if value is not None:
                values[node.output[0]] = np.asarray(onnx.helper.get_attribute_value(value) if value.name != "value"
                                                    else numpy_helper.to_array(value.t))
    return values


def _may_be_negative(name: str, constants: dict[str, np.ndarray]) -> bool:
    """Whether a Pow exponent can be negative: a constant one is read; any other may be."""
    value = constants.get(name)
    return value is None or bool((np.asarray(value, dtype=np.float64) < 0).any())
