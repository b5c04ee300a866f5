"""Node level: where, inside an engine's graph, values first go non-finite or out of tolerance.

The engine's graph and the fp32 graph it was built from are aligned by tensor name: the conversions
keep the name of every tensor they convert (a rounded value takes its original's name), and what
they add has no fp32 counterpart and is not compared.

Non-finite values (``scan``)
    One statistics run of each graph (``brr.onnx.statistics``: every tensor reduced in-graph to a sum
    of squares, max and min, so the memory stays that of a plain run) tells for every tensor whether
    it is finite in the engine and in fp32. The origin is the first tensor, in the fp32 graph's
    topological order, non-finite in the engine and finite in fp32, wherever it is consumed: a value
    sanitised downstream (Clip, Where(IsNaN), Max, Relu of -inf, a normalisation) is still found,
    and the nodes that take a non-finite input and give finite outputs are named as the ones that
    hid it. One marked run of the origin node's inputs and output then gives element counts and
    ranges against the precision's limits: overflow, underflow to zero, 0/0.

    A backend that compiles its own kernels from the graph (TensorRT) reads its tensors itself
    (``Engine.tensor_statistics``: debug tensors of the engine as built), and a tensor computed inside
    a fused kernel is not observable there. When the first non-finite tensor seen is made by such a
    kernel, the tensors fused into it (reached from it through unobserved tensors only) are read once
    more, each made observable, and the first of them non-finite becomes the origin. What was read
    how, and what could not be observed, is recorded (``observed_by``, ``unobserved``).

Out of tolerance (``first_divergent``)
    Bisection over the topological order of one stage's tensors: step m marks, in both graphs, the
    tensors alive across m (made at or before it, used after it), a handful, and compares them
    elementwise with the diff's tolerance.

Every run is a session on the engine's backend with the engine's settings (``Engine.runner_for``);
each run also returns the engine's logits, which must equal the engine's own on that input: the
instrumented engine computes the same tensors as the one under test, or the result says it did not.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from brr.diff.compare import TensorStats
from brr.diff.engines import Engine
from brr.diff.results import (
    PRECISION_LIMITS,
    Cause,
    DivergentNode,
    Localisation,
    NodeRef,
    NonfiniteOrigin,
    OperandRange,
    OutputRange,
    ValueRange,
)
from brr.diff.verdict import NonfiniteKind
from brr.model.contract import OUTPUT_NAME
from brr.onnx.marking import mark_outputs, read_marked
from brr.onnx.precision import unrounded_name
from brr.onnx.stages import node_stages
from brr.onnx.statistics import TensorRange, float_tensors, instrument, read_ranges

# Ops that turn a zero input into inf or NaN.
ZERO_SENSITIVE_OPS = ("Div", "Reciprocal", "Log", "Pow", "Mod")
# Ops that turn a negative input into NaN.
NEGATIVE_SENSITIVE_OPS = ("Sqrt", "Log", "Pow")
# Independent places where values go non-finite described per input.
MAX_ORIGINS = 4
# Their marked values share run pairs up to this many bytes a side: a pair per origin cost two runs each.
MARKED_BYTES_PER_RUN = 256 * 2**20
# The engine's logits must match its own unmarked run this closely to count as the same computation.
REPRODUCTION_RTOL = 1e-5


@dataclass(frozen=True)
class Tensor:
    """One aligned tensor: made by fp32 node ``position`` (topological order), same name in both graphs."""

    position: int
    name: str
    node: str
    op_type: str
    stage: str | None
    last_use: int  # position of its last consumer; len(nodes) for a graph output


class NodeLocaliser:
    """An engine's graph and its fp32 graph, aligned tensor by tensor."""

    def __init__(self, engine: Engine, fp32_runner_for: Callable[[onnx.ModelProto, str], object]):
        if not engine.localisable:
            raise ValueError(f"engine {engine.name!r} has no ONNX graph pair to localise in")
        self.engine = engine
        self.fp32 = engine.fp32_model
        self.fp32_runner_for = fp32_runner_for
        self.nodes = list(self.fp32.graph.node)
        self.initializers = {i.name: i for i in self.fp32.graph.initializer}
        self.engine_initializers = {i.name: i for i in engine.onnx_model.graph.initializer}
        self.engine_producers = {out: node for node in engine.onnx_model.graph.node for out in node.output}
        self.producers = {out: node for node in self.nodes for out in node.output}
        self.tensors = self._align()
        if not self.tensors:
            raise ValueError(f"engine {engine.name!r}: no tensor of its graph matches the fp32 graph by name")
        self.by_name = {t.name: t for t in self.tensors}
        self._statistics_runners: dict[bool, object] = {}  # fp32? -> active runner of the instrumented graph

    def close(self) -> None:
        """Release the sessions kept for statistics runs."""
        for runner in self._statistics_runners.values():
            runner.deactivate()
        self._statistics_runners.clear()

    def _statistics_run(self, feed: dict, fp32: bool) -> dict[str, np.ndarray]:
        """One run of the instrumented graph; its session is made once and kept for every input."""
        runner = self._statistics_runners.get(fp32)
        if runner is None:
            names = [t.name for t in self.tensors]
            model = instrument(self.fp32 if fp32 else self.engine.onnx_model, names)
            factory = self.fp32_runner_for if fp32 else self.engine.runner_for
            runner = factory(model, "fp32-statistics" if fp32 else f"{self.engine.name}-statistics")
            runner.activate()
            self._statistics_runners[fp32] = runner
        return dict(runner.infer(feed))

    def _align(self) -> list[Tensor]:
        engine_floats = set(float_tensors(self.engine.onnx_model))
        fp32_floats = set(float_tensors(self.fp32))
        stages = node_stages(self.fp32)
        outputs = {o.name for o in self.fp32.graph.output}
        last_use = {name: len(self.nodes) for name in outputs}
        for position, node in enumerate(self.nodes):
            for name in node.input:
                last_use[name] = max(last_use.get(name, -1), position)
        return [Tensor(position, name, node.name, node.op_type, stages.get(node.name), last_use.get(name, position))
                for position, node in enumerate(self.nodes) for name in node.output
                if name in fp32_floats and name in engine_floats]

    # ------------------------------------------------------------------------------------ runs
    def _run(self, model: onnx.ModelProto, feed: dict, label: str, fp32: bool) -> dict[str, np.ndarray]:
        factory = self.fp32_runner_for if fp32 else self.engine.runner_for
        with factory(model, label) as runner:
            return dict(runner.infer(feed))

    def _check_reproduced(self, result: Localisation, outputs: dict, engine_logits: np.ndarray | None) -> None:
        if engine_logits is None or OUTPUT_NAME not in outputs:
            return
        ours, theirs = np.asarray(outputs[OUTPUT_NAME], np.float64), np.asarray(engine_logits, np.float64)
        same_nonfinite = bool((np.isfinite(ours) == np.isfinite(theirs)).all())
        both = np.isfinite(ours) & np.isfinite(theirs)
        error = float(np.abs(ours[both] - theirs[both]).max()) if both.any() else 0.0
        scale = float(np.abs(theirs[both]).max()) if both.any() else 0.0
        ok = same_nonfinite and error <= REPRODUCTION_RTOL * (1.0 + scale)
        result.reproduced = ok if result.reproduced is None else result.reproduced and ok
        result.reproduction_error = max(result.reproduction_error, error if same_nonfinite else float("inf"))

    def statistics(self, feed: dict, result: Localisation, engine_logits: np.ndarray | None
                   ) -> dict[str, tuple[TensorRange, TensorRange]]:
        """(fp32 range, engine range) of every aligned tensor the engine stores, on ``feed``: two runs."""
        return self._statistics(feed, result, engine_logits)[0]

    def _statistics(self, feed: dict, result: Localisation, engine_logits: np.ndarray | None
                    ) -> tuple[dict[str, tuple[TensorRange, TensorRange]], dict[str, TensorRange]]:
        """``statistics``, and the fp32 ranges of every aligned tensor (the unobserved ones too)."""
        names = [t.name for t in self.tensors]
        ref_out = self._statistics_run(feed, fp32=True)
        result.runs += 1
        if self.engine.onnx_model is self.fp32 and self.engine.tensor_statistics is None:
            ranges = read_ranges(ref_out, names)  # an fp32 engine of the same graph: one run tells both
            result.observed("instrumented_graph")
            return {n: (ranges[n], ranges[n]) for n in names}, ranges
        if self.engine.tensor_statistics is not None:
            observed = self.engine.tensor_statistics(names, feed)
            engine_ranges, eng_out = observed.ranges, observed.outputs
            result.observed(observed.method)
        else:
            eng_out = self._statistics_run(feed, fp32=False)
            engine_ranges = read_ranges(eng_out, names)
            result.observed("instrumented_graph")
        result.runs += 1
        result.unobserved = [n for n in names if n not in engine_ranges]
        self._check_reproduced(result, eng_out, engine_logits)
        ref_ranges = read_ranges(ref_out, names)
        return {n: (ref_ranges[n], engine_ranges[n]) for n in names if n in engine_ranges}, ref_ranges

    def marked(self, names: list[str], feed: dict, result: Localisation, engine_logits: np.ndarray | None,
               engine_names: list[str] | None = None) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """Values of ``names`` in fp32 and of ``engine_names`` (default the same) in the engine."""
        engine_names = engine_names or names
        ref = read_marked(self._run(mark_outputs(self.fp32, names), feed, "fp32-marked", fp32=True))
        eng = read_marked(self._run(mark_outputs(self.engine.onnx_model, [*engine_names, OUTPUT_NAME]), feed,
                                    f"{self.engine.name}-marked", fp32=False))
        result.runs += 2
        result.observed("marked_outputs")
        self._check_reproduced(result, eng, engine_logits)
        return ref, eng

    # ------------------------------------------------------------------------------------ non-finite
    def scan(self, feed: dict, engine_logits: np.ndarray | None = None) -> Localisation:
        """Where values first go non-finite: in the engine only ('precision' origins), else already in
        fp32 ('fp32' origins); ``first_nonfinite`` is None when every compared tensor is finite."""
        start = time.perf_counter()
        result = Localisation("statistics")
        result.ranges, fp32_ranges = self._statistics(feed, result, engine_logits)
        for kind in NonfiniteKind:
            origins = self._origins(result.ranges, kind)
            if not origins:
                continue
            resolved = []
            for origin in origins[:MAX_ORIGINS]:
                fused = []
                if kind is NonfiniteKind.PRECISION and result.unobserved and self.engine.tensor_statistics:
                    fused = self._fused_into(origin, set(result.ranges))
                if fused:
                    origin = self._first_within(origin, fused, fp32_ranges, feed, result, engine_logits)
                resolved.append((origin, fused))
            values = self._marked_values([origin for origin, _ in resolved], fp32_ranges, feed, result, engine_logits)
            described = [self._describe(origin, result.ranges, feed, kind, values, fused)
                         for origin, fused in resolved]
            result.first_nonfinite, result.more_nonfinite = described[0], described[1:]
            break
        result.seconds = time.perf_counter() - start
        return result

    def _fused_into(self, seen: Tensor, observed: set[str]) -> list[Tensor]:
        """The aligned tensors computed inside the kernel that made ``seen``: those reached from its node's
        inputs through tensors the engine did not store."""
        found, stack, visited = [], list(self.nodes[seen.position].input), set()
        while stack:
            name = stack.pop()
            if name in visited or name in observed or name not in self.producers:
                continue
            visited.add(name)
            if name in self.by_name:
                found.append(self.by_name[name])
            stack.extend(self.producers[name].input)
        return sorted(found, key=lambda t: t.position)

    def _first_within(self, seen: Tensor, fused: list[Tensor], fp32_ranges: dict[str, TensorRange], feed: dict,
                      result: Localisation, engine_logits: np.ndarray | None) -> Tensor:
        """The first of ``fused``, then ``seen``, non-finite in the engine and finite in fp32, with each made
        observable; ``seen`` when none is (making them observable changed what the engine computes: the
        reproduction check says so)."""
        candidates = [*fused, seen]
        observed = self.engine.tensor_statistics([t.name for t in candidates], feed, materialise=True)
        result.observed(observed.method)
        result.runs += 1
        self._check_reproduced(result, observed.outputs, engine_logits)
        for tensor in candidates:
            engine = observed.ranges.get(tensor.name)
            if engine is not None and fp32_ranges[tensor.name].finite and not engine.finite:
                result.ranges[tensor.name] = (fp32_ranges[tensor.name], engine)
                return tensor
        return seen

    @staticmethod
    def _nonfinite(ranges: dict[str, tuple[TensorRange, TensorRange]], kind: NonfiniteKind) -> set[str]:
        """The tensors non-finite in the engine (``kind`` precision) or in fp32."""
        side = 1 if kind is NonfiniteKind.PRECISION else 0
        return {name for name, pair in ranges.items() if not pair[side].finite}

    def _origins(self, ranges: dict[str, tuple[TensorRange, TensorRange]], kind: NonfiniteKind) -> list[Tensor]:
        """Tensors that go non-finite (of ``kind``) from inputs that are all finite, in topological order:
        the first, and any later fault independent of it."""
        bad = self._nonfinite(ranges, kind)
        found = []
        for tensor in self.tensors:
            if tensor.name not in ranges:
                continue
            ref, eng = ranges[tensor.name]
            starts = not eng.finite and ref.finite if kind is NonfiniteKind.PRECISION else not ref.finite
            if starts and not bad.intersection(self.nodes[tensor.position].input):
                found.append(tensor)
        return found

    def _marked_values(self, origins: list[Tensor], fp32_ranges: dict[str, TensorRange], feed: dict,
                       result: Localisation, engine_logits: np.ndarray | None
                       ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """The values of every origin's node inputs and output, fp32 and engine, in as few marked run pairs
        as ``MARKED_BYTES_PER_RUN`` allows (sizes from the statistics run; an engine-only tensor is
        counted at its origin's size)."""
        groups: list[tuple[list[str], list[str], int]] = []
        for origin in origins:
            ref_names, eng_names = self._marked_names(origin, self.nodes[origin.position], feed)
            origin_size = fp32_ranges[origin.name].size
            size = 4 * sum(fp32_ranges[n].size if n in fp32_ranges else origin_size for n in {*ref_names, *eng_names})
            if not groups or groups[-1][2] + size > MARKED_BYTES_PER_RUN:
                groups.append(([], [], 0))
            ref_group, eng_group, total = groups[-1]
            ref_group += [n for n in ref_names if n not in ref_group]
            eng_group += [n for n in eng_names if n not in eng_group]
            groups[-1] = (ref_group, eng_group, total + size)
        ref_values, eng_values = {}, {}
        for ref_names, eng_names, _ in groups:
            ref, eng = self.marked(ref_names, feed, result, engine_logits, eng_names)
            ref_values.update(ref)
            eng_values.update(eng)
        return ref_values, eng_values

    def _describe(self, origin: Tensor, ranges, feed: dict, kind: NonfiniteKind,
                  values: tuple[dict[str, np.ndarray], dict[str, np.ndarray]], fused: list[Tensor]
                  ) -> NonfiniteOrigin:
        node = self.nodes[origin.position]
        bad = self._nonfinite(ranges, kind)
        hiders = self._hiders(origin, ranges, bad)
        inputs, output = self._input_ranges(node, origin, feed, *values)
        cause, explanation = self._explain(node.op_type, inputs, output, kind)
        return NonfiniteOrigin(
            node=node.name, op_type=node.op_type, stage=origin.stage, tensor=origin.name, kind=kind, inputs=inputs,
            output=output, hidden_by=hiders[:5], hidden_by_count=len(hiders),
            nonfinite_outputs=[o.name for o in self.fp32.graph.output if o.name in bad],
            contaminated=len([t for t in self.tensors if t.position > origin.position and t.name in bad]),
            cause=cause, explanation=explanation, fused_with=[t.name for t in fused] if fused else None)

    def _hiders(self, origin: Tensor, ranges, bad: set[str]) -> list[NodeRef]:
        """The nodes after ``origin`` that take a non-finite input and give finite outputs."""
        hiders: list[NodeRef] = []
        for tensor in self.tensors:
            # A hider gives a finite output seen in the engine; an output it did not store tells nothing.
            if tensor.position <= origin.position or tensor.name in bad or tensor.name not in ranges:
                continue
            consumer = self.nodes[tensor.position]
            hides = bad.intersection(consumer.input) and not any(
                out in bad for out in consumer.output if out in self.by_name)
            if hides and (not hiders or hiders[-1].node != tensor.node):
                hiders.append(NodeRef(tensor.node, tensor.op_type, tensor.stage))
        return hiders

    def _engine_inputs(self, origin: Tensor, node: onnx.NodeProto) -> tuple[list[str], str | None]:
        """What the engine's node computing ``origin`` reads, paired by position with ``node.input``,
        and the name of its result before it is stored (rounding engines keep both)."""
        unrounded = unrounded_name(origin.name)
        compute = self.engine_producers.get(unrounded) or self.engine_producers.get(origin.name)
        if compute is None or len(compute.input) != len(node.input):
            return list(node.input), None
        return list(compute.input), unrounded if unrounded in self.engine_producers else None

    def _marked_names(self, origin: Tensor, node: onnx.NodeProto, feed: dict) -> tuple[list[str], list[str]]:
        """What to mark to describe ``origin``: its node's computed inputs and its output, in fp32 and in
        the engine (plus the engine's result before it is stored)."""
        engine_inputs, unrounded = self._engine_inputs(origin, node)
        computed = [(r, e) for r, e in zip(node.input, engine_inputs) if r and r not in self.initializers
                    and r not in feed and e not in self.engine_initializers and e not in feed]
        return ([r for r, _ in computed] + [origin.name],
                [e for _, e in computed] + [origin.name] + ([unrounded] if unrounded else []))

    def _input_ranges(self, node: onnx.NodeProto, origin: Tensor, feed: dict, ref_values: dict[str, np.ndarray],
                      eng_values: dict[str, np.ndarray]) -> tuple[list[OperandRange], OutputRange]:
        engine_inputs, unrounded = self._engine_inputs(origin, node)
        pairs = [(ref, eng) for ref, eng in zip(node.input, engine_inputs) if ref]

        def value(name: str, values: dict, initializers: dict) -> np.ndarray | None:
            if name in values:
                return values[name]
            if name in feed:
                return feed[name]
            if name in initializers:
                return numpy_helper.to_array(initializers[name])
            return None

        inputs = []
        producers = {out: n for n in self.nodes for out in n.output}
        for ref_name, eng_name in pairs:
            ref, eng = value(ref_name, ref_values, self.initializers), value(eng_name, eng_values,
                                                                            self.engine_initializers)
            producer = producers.get(ref_name)
            inputs.append(OperandRange(ref_name, producer.name if producer is not None else None,
                                       producer.op_type if producer is not None else None,
                                       ValueRange.of(ref), ValueRange.of(eng)))
        ref_out, eng_out = ref_values[origin.name], eng_values[origin.name]
        stats = TensorStats()
        stats.add(np.asarray(ref_out), np.asarray(eng_out, dtype=np.float32), 0.0, 0.0)
        output = OutputRange(origin.name, ValueRange.of(ref_out), ValueRange.of(eng_out), stats.precision_nonfinite,
                             stats.elements, ValueRange.of(eng_values[unrounded]) if unrounded else None)
        return inputs, output

    def _explain(self, op: str, inputs: list[OperandRange], out: OutputRange, kind: NonfiniteKind
                 ) -> tuple[Cause, str]:
        if kind is NonfiniteKind.FP32:
            return Cause.FP32, f"{op} output is already non-finite in fp32: a model defect, not precision"
        precision = self.engine.precision
        limits = PRECISION_LIMITS.get(precision)
        count = f"{out.engine.nonfinite:,} of {out.elements:,} values"
        if limits is None:
            return Cause.UNKNOWN, f"{op} gives {count} non-finite in {precision} where fp32 is finite"
        largest, normal, subnormal = limits
        peak = out.fp32.abs_max
        if peak is not None and peak > largest:
            stored = out.engine_before_storing
            where = (" when its result is stored in " + precision if stored is not None and stored.nonfinite == 0
                     else "")
            return Cause.OVERFLOW, (f"overflow: {op} reaches {peak:.3g} in fp32, beyond {precision}'s largest "
                                    f"finite {largest:g}{where}: {count} become inf/NaN")
        for entry in inputs:
            ref, eng = entry.fp32, entry.engine
            if ref is None or eng is None:
                continue
            if eng.abs_max is not None and eng.abs_max > largest:
                return Cause.OVERFLOW, (f"overflow: input {entry.name} reaches {eng.abs_max:.3g}, beyond "
                                        f"{precision}'s largest finite {largest:g}")
            if eng.zeros > ref.zeros and op in ZERO_SENSITIVE_OPS:
                made_by = f" (made by {entry.producer}, {entry.producer_op})" if entry.producer else ""
                tiny = ref.abs_min_nonzero
                lost = f"{eng.zeros - ref.zeros:,} places where fp32 holds values down to {tiny:.2g}"
                if tiny is not None and tiny < normal:
                    return Cause.UNDERFLOW, (f"underflow: input {entry.name}{made_by} is 0 in {precision} at "
                                             f"{lost} (smallest {precision} normal {normal:.2g}, subnormal "
                                             f"{subnormal:.2g}); {op} of 0 gives {count} inf/NaN")
                return Cause.CANCELLATION, (f"cancellation: input {entry.name}{made_by} is 0 in {precision} "
                                            f"at {lost}, far above {precision}'s smallest normal: its digits were "
                                            f"lost to rounding upstream; {op} of 0 gives {count} inf/NaN")
            if (op in NEGATIVE_SENSITIVE_OPS and eng.min is not None and eng.min < 0
                    and ref.min is not None and ref.min >= 0):
                return Cause.CANCELLATION, (f"cancellation: input {entry.name} goes down to {eng.min:.3g} in "
                                            f"{precision} where fp32 stays >= 0; {op} of it gives {count} NaN")
        return Cause.UNKNOWN, (f"{op} gives {count} non-finite in {precision} while fp32 is finite "
                               f"(fp32 output up to {peak if peak is not None else float('nan'):.3g})")

    # ------------------------------------------------------------------------------------ tolerance
    def first_divergent(self, feed: dict, stage: str | None, atol: float, rtol: float,
                        engine_logits: np.ndarray | None = None) -> Localisation:
        """The first tensor of ``stage`` (all tensors when None) beyond tolerance, by bisection over cuts."""
        start = time.perf_counter()
        result = Localisation("bisection")
        candidates = [t for t in self.tensors if stage is None or t.stage == stage]
        compared: dict[str, TensorStats] = {}

        def cut_is_off(index: int) -> bool:
            at = candidates[index].position
            cut = [t for t in candidates if t.position <= at < t.last_use or t.position == at]
            todo = [t.name for t in cut if t.name not in compared]
            if todo:
                ref, eng = self.marked(todo, feed, result, engine_logits)
                for name in todo:
                    stats = TensorStats()
                    stats.add(np.asarray(ref[name]), np.asarray(eng[name], dtype=np.float32), atol, rtol)
                    compared[name] = stats
            return any(not compared[t.name].passed for t in cut)

        if candidates and cut_is_off(len(candidates) - 1):
            lo, hi = 0, len(candidates) - 1
            while lo < hi:
                mid = (lo + hi) // 2
                if cut_is_off(mid):
                    hi = mid
                else:
                    lo = mid + 1
            at = candidates[lo].position
            off = [t for t in candidates if t.name in compared and not compared[t.name].passed and t.position <= at]
            first = min(off, key=lambda t: t.position)
            result.first_divergent = DivergentNode(first.node, first.op_type, first.stage, first.name,
                                                   compared[first.name])
        else:
            where = f"stage {stage}" if stage else "the graph"
            result.note = (f"no tensor of {where} differs from the fp32 ONNX graph beyond tolerance: the divergence "
                           "from PyTorch is in the fp32 export itself")
        result.seconds = time.perf_counter() - start
        return result

