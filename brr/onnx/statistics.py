"""Statistics of every tensor of a graph, computed inside the graph while it runs.

Marking a tensor as a graph output makes ONNX Runtime keep it until the run ends: marking every node
output of ``v3-small`` holds 4.5 GB for one window. ``instrument`` instead inserts, right after the
node that makes each listed tensor, its reduction to four scalars (sum of squares, max, min, size);
only those scalars are graph outputs. Run in a session with ``LEAN_SESSION_OPTIONS`` (priority-based
order, which keeps this node order, and no memory arena), each tensor is reduced as soon as it is
made and freed at its last use: a run stays close to the plain run's memory.

A tensor's sum of squares, accumulated in fp32, is finite exactly when all its elements are finite
(up to magnitudes of ~1e19, where the square itself overflows: the range then says so). Tensors
stored in fp16 or bf16 are cast to fp32 first, so the reduction cannot overflow where the tensor
does not.

``tensor_range`` computes the same four statistics of a tensor held in memory (a TensorRT debug
tensor in the listener that receives it, an engine output), so ranges read either way compare.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import onnx
import onnx_ir as ir

STATISTICS = ("sumsq", "max", "min", "size")
SEPARATOR = "::"
_LOW_PRECISION = (ir.DataType.FLOAT16, ir.DataType.BFLOAT16)
_FLOATS = (ir.DataType.FLOAT, *_LOW_PRECISION)


@dataclass(frozen=True)
class TensorRange:
    """One run's statistics of one tensor."""

    sum_squares: float
    max: float
    min: float
    size: int

    @property
    def finite(self) -> bool:
        return math.isfinite(self.sum_squares)

    @property
    def abs_max(self) -> float:
        """Largest magnitude; meaningful when ``finite``."""
        return max(abs(self.max), abs(self.min)) if self.size else 0.0

    def to_dict(self) -> dict:
        return {"finite": self.finite, "abs_max": self.abs_max if self.finite else None,
                "max": self.max if self.finite else None, "min": self.min if self.finite else None,
                "size": self.size}


@dataclass
class ObservedRanges:
    """One run of an engine whose backend reduced its intermediate tensors itself (TensorRT debug tensors)."""

    ranges: dict[str, TensorRange]  # the tensors the backend reported; a tensor it fused away is absent
    outputs: dict[str, np.ndarray]  # the run's own outputs (logits, probes)
    method: str  # how the tensors were read, as the diff report names it


def statistic_name(tensor: str, statistic: str) -> str:
    return f"{tensor}{SEPARATOR}{statistic}"


def float_tensors(model: onnx.ModelProto) -> list[str]:
    """Float outputs of the top-level nodes, in node order (the candidates for ``instrument``)."""
    graph = ir.from_proto(onnx.shape_inference.infer_shapes(model)).graph
    return [v.name for node in graph for v in node.outputs if v.name and v.dtype in _FLOATS]


def instrument(model: onnx.ModelProto, tensors: Iterable[str]) -> onnx.ModelProto:
    """A copy of ``model`` whose outputs are its own plus the statistics of each of ``tensors``.

    ``tensors`` must be float outputs of top-level nodes; others are refused by name (a tensor
    inside a Loop body is reported through the Loop's outputs).
    """
    wanted = set(tensors)
    inferred = ir.from_proto(onnx.shape_inference.infer_shapes(model))
    graph = inferred.graph
    found = set()
    for node in list(graph):
        anchor = node
        for value in node.outputs:
            if value.name not in wanted:
                continue
            if value.dtype not in _FLOATS:
                raise ValueError(f"{value.name}: not a float tensor ({value.dtype}); statistics are for floats")
            found.add(value.name)
            source, added = value, []
            if value.dtype in _LOW_PRECISION:
                cast = ir.node("Cast", [value], {"to": ir.DataType.FLOAT}, name=statistic_name(value.name, "fp32"))
                source, added = cast.outputs[0], [cast]
            reductions = {
                "sumsq": ir.node("ReduceSumSquare", [source], {"keepdims": 0}),
                "max": ir.node("ReduceMax", [source], {"keepdims": 0}),
                "min": ir.node("ReduceMin", [source], {"keepdims": 0}),
                "size": ir.node("Size", [source]),
            }
            for statistic, reduction in reductions.items():
                out = reduction.outputs[0]
                reduction.name = out.name = statistic_name(value.name, statistic)
                out.dtype = ir.DataType.INT64 if statistic == "size" else ir.DataType.FLOAT
                out.shape = ir.Shape([])
                graph.outputs.append(out)
            added += reductions.values()
            graph.insert_after(anchor, added)
            anchor = added[-1]
    missing = wanted - found
    if missing:
        shown = ", ".join(sorted(missing)[:5])
        raise ValueError(f"{len(missing)} tensor(s) are not outputs of top-level nodes: {shown}")
    return ir.to_proto(inferred)


def tensor_range(values) -> TensorRange:
    """The ``TensorRange`` of a torch tensor, on its device: fp32 accumulation, as ``instrument``'s."""
    import torch

    flat = values.detach().reshape(-1).to(torch.float32)
    if flat.numel() == 0:
        return TensorRange(0.0, 0.0, 0.0, 0)
    low, high = torch.aminmax(flat)
    sum_squares, high, low = torch.stack([torch.dot(flat, flat), high, low]).tolist()
    return TensorRange(sum_squares, high, low, flat.numel())


def read_ranges(outputs: dict[str, np.ndarray], tensors: Iterable[str]) -> dict[str, TensorRange]:
    """The ``TensorRange`` of each of ``tensors`` from the outputs of an instrumented run."""
    ranges = {}
    for name in tensors:
        values = [outputs[statistic_name(name, s)] for s in STATISTICS]
        ranges[name] = TensorRange(*(float(v) for v in values[:3]), size=int(values[3]))
    return ranges
