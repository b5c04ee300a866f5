"""Node level: every ONNX node output of a reduced-precision engine against the fp32 ONNX graph.

Nodes are matched by name (``convert_float_to_float16`` keeps names; the Cast nodes it inserts have
no fp32 counterpart and are skipped) and outputs by position. Outputs are marked with Polygraphy's
``ModifyOutputs``, the graph's own outputs always among them, so each marked run also says whether
the marked engine still reproduces the unmarked verdict (marking can break fusions).

Three ways to mark, all reducing each tensor to ``TensorStats`` as it arrives:
- ``mark_all``: every node output in one run, when the engine tolerates it and the outputs of one
  input fit in ``max_marked_bytes``;
- ``bisection`` (non-finite values): binary search over the topological order for the first node
  whose output goes non-finite. Step m marks only the *cut* at m (tensors made at or before node m
  and used after it), through which any non-finite value made up to m must pass to reach the
  outputs; so the set marked stays small. Non-finite values that a later node sanitises are not
  followed (they do not reach the outputs).
- ``chunked`` (finite divergence, or counting contamination downstream): consecutive sets of
  outputs that fit in ``max_marked_bytes`` each.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import numpy_helper
from polygraphy.backend.onnx import ModifyOutputs
from polygraphy.logger import G_LOGGER

from brr.diff.compare import TensorStats
from brr.diff.engines import Engine
from brr.diff.stages import node_stages

DEFAULT_MAX_MARKED_BYTES = 256 * 2**20
# (largest finite, smallest positive subnormal) of the reduced precisions an engine may run in.
PRECISION_LIMITS: dict[str, tuple[float, float]] = {
    "fp16": (65504.0, 2.0**-24),
    "bf16": (3.3895e38, 2.0**-133),
}
FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16, onnx.TensorProto.DOUBLE}


@dataclass
class Tensor:
    """One compared node output: its fp32 and engine names and where it sits in the fp32 graph."""

    position: int  # index of the producing node in the fp32 topological order
    node: str
    op_type: str
    stage: str | None
    ref_name: str
    engine_name: str
    last_use: int  # position of the last consumer; len(nodes) for graph outputs
    elements: int


@dataclass
class TensorVerdict:
    stats: TensorStats
    precision_nonfinite: bool
    fp32_nonfinite: bool


@dataclass
class Localisation:
    mode: str
    runs: int = 0
    reproduced: bool | None = None
    first_nonfinite: dict | None = None
    # node name -> (op_type, stage, stats): statistics only, never tensors.
    nodes: dict[str, tuple[str, str | None, TensorStats]] = field(default_factory=dict)


class NodeComparison:
    """The fp32 and engine graphs of one engine, aligned node by node."""

    def __init__(self, engine: Engine, batch: int, max_marked_bytes: int = DEFAULT_MAX_MARKED_BYTES):
        if not engine.localisable:
            raise ValueError(f"engine {engine.name!r} has no ONNX graph pair to localise in")
        self.engine = engine
        self.max_marked_bytes = max_marked_bytes
        self.fp32 = onnx.shape_inference.infer_shapes(engine.fp32_model)
        self.graph_outputs = [o.name for o in self.fp32.graph.output]
        self.engine_outputs = [o.name for o in engine.onnx_model.graph.output]
        self.tensors = self._align(batch)
        if not self.tensors:
            raise ValueError(f"engine {engine.name!r}: no node of its graph matches the fp32 graph by name")
        self.by_ref_name = {t.ref_name: t for t in self.tensors}

    def _align(self, batch: int) -> list[Tensor]:
        engine_nodes = {n.name: n for n in self.engine.onnx_model.graph.node if n.name}
        nodes = list(self.fp32.graph.node)
        stages = node_stages(self.fp32)
        last_use: dict[str, int] = {name: len(nodes) for name in self.graph_outputs}
        for position, node in enumerate(nodes):
            for name in node.input:
                last_use[name] = max(last_use.get(name, -1), position)
        shapes = {v.name: v.type.tensor_type for v in list(self.fp32.graph.value_info) + list(self.fp32.graph.output)}
        tensors = []
        for position, node in enumerate(nodes):
            twin = engine_nodes.get(node.name)
            if node.op_type == "Constant" or twin is None or len(twin.output) != len(node.output):
                continue
            for ref_name, engine_name in zip(node.output, twin.output):
                kind = shapes.get(ref_name)
                if not ref_name or (kind is not None and kind.elem_type not in FLOAT_TYPES):
                    continue
                tensors.append(Tensor(position, node.name, node.op_type, stages.get(node.name), ref_name,
                                      engine_name, last_use.get(ref_name, position), _elements(kind, batch)))
        return tensors

    # -------------------------------------------------------------------------------- running
    def evaluate(self, tensors: list[Tensor], feed: dict, atol: float, rtol: float, expect_nonfinite: bool,
                 result: Localisation) -> dict[str, TensorVerdict]:
        """Mark ``tensors`` (in runs of at most ``max_marked_bytes``) and reduce each to its verdict."""
        verdicts: dict[str, TensorVerdict] = {}
        for chunk in self._chunks(tensors):
            ref_out = self._run(self.fp32, [t.ref_name for t in chunk] + self.graph_outputs, feed, "fp32-marked")
            eng_out = self._run(self.engine.onnx_model, [t.engine_name for t in chunk] + self.engine_outputs, feed,
                                f"{self.engine.name}-marked")
            result.runs += 1
            reproduces = any(_precision_nonfinite(ref_out[r], eng_out[e])
                             for r, e in zip(self.graph_outputs, self.engine_outputs)) == expect_nonfinite
            result.reproduced = reproduces if result.reproduced is None else result.reproduced and reproduces
            for t in chunk:
                ref, eng = ref_out[t.ref_name], eng_out[t.engine_name].astype(np.float32)
                stats = TensorStats()
                stats.add(ref, eng, atol, rtol)
                verdicts[t.ref_name] = TensorVerdict(stats, stats.precision_nonfinite > 0, stats.ref_nonfinite > 0)
                result.nodes.setdefault(t.node, (t.op_type, t.stage, TensorStats()))[2].merge(stats)
            del ref_out, eng_out  # one chunk's tensors at a time
        return verdicts

    def _chunks(self, tensors: list[Tensor]) -> Iterable[list[Tensor]]:
        chunk, size = [], 0
        for t in tensors:
            cost = 2 * 4 * t.elements  # fp32 and engine copies
            if chunk and size + cost > self.max_marked_bytes:
                yield chunk
                chunk, size = [], 0
            chunk.append(t)
            size += cost
        if chunk:
            yield chunk

    def _run(self, model: onnx.ModelProto, names: list[str], feed: dict, label: str) -> dict[str, np.ndarray]:
        unique = list(dict.fromkeys(names))
        with G_LOGGER.verbosity(G_LOGGER.ERROR):
            marked = ModifyOutputs(model, outputs=unique, copy=True)()
            with self.engine.runner_for(marked, label) as runner:
                return dict(runner.infer(feed))

    # -------------------------------------------------------------------------------- strategies
    def localise(self, feed: dict, atol: float, rtol: float, kind: str | None) -> Localisation:
        """Node statistics for one input; with ``kind`` 'precision' or 'fp32', also the first node
        whose output is non-finite in the engine (fp32 finite), or already in fp32."""
        total = 2 * 4 * sum(t.elements for t in self.tensors)
        expect = kind == "precision"
        if self.engine.mark_all_safe and total <= self.max_marked_bytes:
            result = Localisation("mark_all")
            verdicts = self.evaluate(self.tensors, feed, atol, rtol, expect, result)
        elif kind is None:
            result = Localisation("chunked")
            verdicts = self.evaluate(self.tensors, feed, atol, rtol, expect, result)
        else:
            result = Localisation("bisection")
            verdicts = self._bisect(feed, atol, rtol, kind, result)
        if kind is not None:
            result.first_nonfinite = self._first_nonfinite(verdicts, feed, atol, rtol, kind, result)
        return result

    def _bad(self, verdict: TensorVerdict, kind: str) -> bool:
        return verdict.precision_nonfinite if kind == "precision" else verdict.fp32_nonfinite

    def _bisect(self, feed: dict, atol: float, rtol: float, kind: str, result: Localisation) -> dict[str, TensorVerdict]:
        positions = sorted({t.position for t in self.tensors})
        verdicts: dict[str, TensorVerdict] = {}

        def cut_is_bad(m: int) -> bool:
            cut = [t for t in self.tensors if t.position <= m < t.last_use or (t.position == m)]
            todo = [t for t in cut if t.ref_name not in verdicts]
            verdicts.update(self.evaluate(todo, feed, atol, rtol, kind == "precision", result))
            return any(self._bad(verdicts[t.ref_name], kind) for t in cut)

        lo, hi = 0, len(positions) - 1
        if not cut_is_bad(positions[hi]):
            return verdicts
        while lo < hi:
            mid = (lo + hi) // 2
            if cut_is_bad(positions[mid]):
                hi = mid
            else:
                lo = mid + 1
        return verdicts

    def _first_nonfinite(self, verdicts: dict[str, TensorVerdict], feed: dict, atol: float, rtol: float,
                         kind: str, result: Localisation) -> dict | None:
        bad = [self.by_ref_name[name] for name, v in verdicts.items() if self._bad(v, kind)]
        if not bad:
            return None
        first = min(bad, key=lambda t: t.position)
        node = self.fp32.graph.node[first.position]
        # Contamination: every output downstream of the node, marked in bounded runs where not yet seen.
        downstream = self._descendants(node)
        todo = [t for t in self.tensors if t.ref_name in downstream and t.ref_name not in verdicts]
        verdicts.update(self.evaluate(todo, feed, atol, rtol, kind == "precision", result))
        contaminated = sum(self._bad(verdicts[t.ref_name], kind) for t in self.tensors if t.ref_name in downstream)
        input_ranges = self._input_ranges(node, feed)
        output_stats = verdicts[first.ref_name].stats
        return {
            "node": node.name, "op_type": node.op_type, "stage": first.stage, "kind": kind,
            "input_ranges": input_ranges,
            "output_range": [output_stats.ref_min, output_stats.ref_max],
            "contaminated": contaminated,
            "explanation": self._explain(node, input_ranges, output_stats, kind),
        }

    def _descendants(self, node: onnx.NodeProto) -> set[str]:
        reached = set(node.output)
        for other in self.fp32.graph.node:
            if reached.intersection(other.input):
                reached.update(other.output)
        return reached - set(node.output)

    def _input_ranges(self, node: onnx.NodeProto, feed: dict) -> list[dict]:
        """fp32 value range of each input: from the feed, an initializer, or a marked fp32 run."""
        initializers = {i.name: i for i in self.fp32.graph.initializer}
        computed = [name for name in node.input if name and name not in initializers and name not in feed]
        values = self._run(self.fp32, computed, feed, "fp32-inputs") if computed else {}
        ranges = []
        for name in node.input:
            if not name:
                continue
            array = feed[name] if name in feed else (
                numpy_helper.to_array(initializers[name]) if name in initializers else values[name])
            ranges.append({"name": name} | _value_range(np.asarray(array)))
        return ranges

    def _explain(self, node: onnx.NodeProto, input_ranges: list[dict], output: TensorStats, kind: str) -> str:
        if kind == "fp32":
            return f"{node.op_type} output is already non-finite in fp32: a model defect, not precision"
        limits = PRECISION_LIMITS.get(self.engine.precision)
        if limits is None:
            return f"{node.op_type} output is non-finite in {self.engine.precision} while finite in fp32"
        largest, smallest = limits
        peak = max(abs(output.ref_min or 0.0), abs(output.ref_max or 0.0))
        if peak > largest:
            return f"{node.op_type} output {peak:.2g} > {self.engine.precision} max {largest:g}"
        for r in input_ranges:
            if r["abs_max"] is not None and r["abs_max"] > largest:
                return f"{node.op_type} input {r['name']} {r['abs_max']:.2g} > {self.engine.precision} max {largest:g}"
            if r["abs_min_nonzero"] is not None and r["abs_min_nonzero"] < smallest:
                return (f"{node.op_type} input {r['name']} {r['abs_min_nonzero']:.2g} < {self.engine.precision} "
                        f"smallest subnormal {smallest:.2g}: flushed to 0")
        return f"{node.op_type} output is non-finite in {self.engine.precision} while finite in fp32 (range {peak:.2g})"


def _elements(kind, batch: int) -> int:
    """Element count from an inferred shape, symbolic dims taken as the batch; unknown -> 1 MiB worth."""
    if kind is None or not kind.HasField("shape"):
        return 2**18
    count = 1
    for dim in kind.shape.dim:
        count *= dim.dim_value if dim.HasField("dim_value") else batch
    return count


def _precision_nonfinite(ref: np.ndarray, eng: np.ndarray) -> bool:
    return bool((np.isfinite(ref) & ~np.isfinite(np.asarray(eng, dtype=np.float32))).any())


def _value_range(array: np.ndarray) -> dict:
    values = np.asarray(array, dtype=np.float64)
    finite = values[np.isfinite(values)]
    nonzero = np.abs(finite[finite != 0])
    return {
        "min": float(finite.min()) if finite.size else None,
        "max": float(finite.max()) if finite.size else None,
        "abs_max": float(np.abs(finite).max()) if finite.size else None,
        "abs_min_nonzero": float(nonzero.min()) if nonzero.size else None,
        "nonfinite": int(values.size - finite.size),
    }

