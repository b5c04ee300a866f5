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

    A tensor is judged as its consumers read it. A rounding engine (``brr.onnx.precision``) keeps a
    probe's or a pinned node's result in fp32 under its own name and stores a copy in the precision
    for its reduced-precision consumers (a Cast): that copy is instrumented too, and where it is
    non-finite the tensor is, so a finite fp32 result that overflows only when stored is named at
    the node that made it ("overflow when stored"), not at its consumer. An origin never reads a
    non-finite input in its own table: where the marked run shows one that the statistics did not
    (a value computed inside a fused kernel), the producer of that input is described instead, and
    so on upstream. Only a weight or graph input, which no node makes, can be non-finite at an
    origin: stored in the precision beyond its range.

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

Origin or propagator (``judge_roles``)
    From a named node (an origin, the first divergent node) down the shortest path to a probe, the
    first ``MAX_REPLAYED_NODES`` nodes are each run alone, cut out of the engine's graph as the engine
    computes them (its weights, casts and stores), on fp32's values of their inputs stored as the
    engine stores them: one marked fp32 run gives the inputs, one small session per node. A node
    whose own result is non-finite or beyond tolerance there makes error (origin); one within it
    carries what it receives (propagator), as does one whose exact inputs the precision cannot even
    hold (non-finite once stored: its producer's store made that). Engines that compile their own
    kernels (TensorRT) are not replayed: no ONNX node of theirs is what they run.

Every run is a session on the engine's backend with the engine's settings (``Engine.runner_for``);
each run also returns the engine's logits, which must equal the engine's own on that input: the
instrumented engine computes the same tensors as the one under test, or the result says it did not.
"""

from __future__ import annotations

import dataclasses
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper
from onnxruntime.capi import onnxruntime_pybind11_state as ort_state
from polygraphy.exception import PolygraphyException

from brr.diff.compare import TensorStats
from brr.diff.engines import Engine
from brr.diff.results import (
    PRECISION_LIMITS,
    Cause,
    DivergentNode,
    Localisation,
    NodeRef,
    NodeRole,
    NonfiniteOrigin,
    OperandRange,
    OutputRange,
    ReplayedNode,
    ReplayedPath,
    ValueRange,
)
from brr.diff.verdict import NonfiniteKind
from brr.model.contract import OUTPUT_NAME
from brr.onnx.marking import mark_outputs, read_marked
from brr.onnx.precision import unrounded_name
from brr.onnx.source import module_sources
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
# Nodes replayed alone from a named node towards the first probe: the named one and the next ones it feeds.
MAX_REPLAYED_NODES = 8
# What running a node alone on the engine's backend may raise: an op it lacks, a graph it refuses.
REPLAY_ERRORS = (ort_state.Fail, ort_state.InvalidArgument, ort_state.InvalidGraph, ort_state.NotImplemented,
                 ort_state.RuntimeException, PolygraphyException, NotImplementedError, RuntimeError)
LOW_PRECISION_TYPES = (onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16)
# Nodes that only move a value between storage types (a store, a weight's cast, int8's quantisation).
STORAGE_OPS = ("Cast", "QuantizeLinear", "DequantizeLinear")
# The fp32 graph input of a node replayed alone that a Cast stores as the engine does.
EXACT_INPUT = "::exact"


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

    # Whether inputs whose probes pass are scanned too (for values the guards hide): one in-graph statistics
    # run each here; a backend whose scan costs many compilations leaves passing inputs to the probes.
    scans_passing_inputs = True

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
        self.sources = module_sources(self.fp32)  # fp32 node -> the nn.Module it was traced in
        self.stored_copies = self._stored_copies()
        self._statistics_runners: dict[bool, object] = {}  # fp32? -> active runner of the instrumented graph
        self._sizes: dict[str, int] = {}  # aligned tensor -> elements, from the last statistics run
        self._judged: set[str] = set()  # nodes whose path to a probe was replayed (once per engine)
        self._extractor: onnx.utils.Extractor | None = None  # the engine's typed graph, to cut nodes out of

    def close(self) -> None:
        """Release the sessions kept for statistics runs."""
        for runner in self._statistics_runners.values():
            runner.deactivate()
        self._statistics_runners.clear()

    def _stored_copies(self) -> dict[str, str]:
        """Aligned tensor -> the copy of it the engine stores in a reduced precision for the consumers that
        compute in it, where the engine keeps the tensor itself in fp32 under its name (a rounding engine's
        probes and pinned nodes' results: ``brr.onnx.precision``)."""
        copies: dict[str, str] = {}
        for node in self.engine.onnx_model.graph.node:
            to = next((a.i for a in node.attribute if a.name == "to"), None)
            if (node.op_type == "Cast" and to in LOW_PRECISION_TYPES and node.input[0] in self.by_name
                    and node.output[0] not in self.by_name):
                copies.setdefault(node.input[0], node.output[0])
        return copies

    def _as_consumers_read(self, ranges: dict[str, TensorRange]) -> dict[str, TensorRange]:
        """The engine's ranges of the aligned tensors as their consumers read them: a stored copy that is
        non-finite stands for its tensor (a finite fp32 result that overflows when stored)."""
        for name, copy in self.stored_copies.items():
            stored = ranges.pop(copy)
            if name in ranges and not stored.finite:
                ranges[name] = stored
        return ranges

    def _statistics_run(self, feed: dict, fp32: bool) -> dict[str, np.ndarray]:
        """One run of the instrumented graph; its session is made once and kept for every input."""
        runner = self._statistics_runners.get(fp32)
        if runner is None:
            names = [t.name for t in self.tensors] + ([] if fp32 else list(self.stored_copies.values()))
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
            self._sizes = {n: r.size for n, r in ranges.items()}
            return {n: (ranges[n], ranges[n]) for n in names}, ranges
        if self.engine.tensor_statistics is not None:
            observed = self.engine.tensor_statistics(names, feed)
            engine_ranges, eng_out = observed.ranges, observed.outputs
            result.observed(observed.method)
        else:
            eng_out = self._statistics_run(feed, fp32=False)
            engine_ranges = self._as_consumers_read(read_ranges(eng_out, [*names, *self.stored_copies.values()]))
            result.observed("instrumented_graph")
        result.runs += 1
        result.unobserved = [n for n in names if n not in engine_ranges]
        self._check_reproduced(result, eng_out, engine_logits)
        ref_ranges = read_ranges(ref_out, names)
        self._sizes = {n: r.size for n, r in ref_ranges.items()}
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
            described = self._described(resolved, fp32_ranges, feed, kind, result, engine_logits)
            result.first_nonfinite, result.more_nonfinite = described[0], described[1:]
            break
        result.seconds = time.perf_counter() - start
        return result

    def _described(self, resolved: list[tuple[Tensor, list[Tensor]]], fp32_ranges: dict[str, TensorRange],
                   feed: dict, kind: NonfiniteKind, result: Localisation, engine_logits: np.ndarray | None
                   ) -> list[NonfiniteOrigin]:
        """Each origin (with the tensors fused into it) described, in topological order. One whose marked
        inputs are non-finite all the same (a value the statistics did not see so) gives way to the producer
        of such an input, described from another marked run, and so on up: no origin reads a non-finite
        value that a node made."""
        described: dict[str, NonfiniteOrigin] = {}
        while resolved:
            values = self._marked_values([origin for origin, _ in resolved], fp32_ranges, feed, result,
                                         engine_logits)
            upstream: dict[str, tuple[Tensor, list[Tensor]]] = {}
            for origin, fused in resolved:
                found = self._describe(origin, result.ranges, feed, kind, values, fused)
                producer = self._nonfinite_input_producer(found, kind)
                if producer is None:
                    described.setdefault(found.node, found)
                elif producer.node not in described:
                    upstream.setdefault(producer.name, (producer, []))
            resolved = list(upstream.values())
        return sorted(described.values(), key=lambda o: self.by_name[o.tensor].position)

    def _nonfinite_input_producer(self, found: NonfiniteOrigin, kind: NonfiniteKind) -> Tensor | None:
        """The aligned tensor made by a node that ``found`` reads non-finite (in the engine, or in fp32 for an
        fp32 origin), if any."""
        for entry in found.inputs:
            side = entry.engine if kind is NonfiniteKind.PRECISION else entry.fp32
            if side is not None and side.nonfinite and entry.name in self.by_name:
                return self.by_name[entry.name]
        return None

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
            cause=cause, explanation=explanation, fused_with=[t.name for t in fused] if fused else None,
            module=self.sources.get(node.name))

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

    def _compute_node(self, tensor: str, op_type: str) -> onnx.NodeProto | None:
        """The engine's node that computes ``tensor`` (made by an fp32 node of ``op_type``): a rounding engine's
        ``<node>_unrounded``, else the node before the casts that store its result (a converted graph's
        output casts, int8's quantisation)."""
        compute = self.engine_producers.get(unrounded_name(tensor)) or self.engine_producers.get(tensor)
        while compute is not None and compute.op_type in STORAGE_OPS and compute.op_type != op_type:
            compute = self.engine_producers.get(compute.input[0])
        return compute

    def _engine_inputs(self, origin: Tensor, node: onnx.NodeProto) -> list[str]:
        """What the engine's node computing ``origin`` reads, paired by position with ``node.input``."""
        compute = self._compute_node(origin.name, node.op_type)
        if compute is None or len(compute.input) != len(node.input):
            return list(node.input)
        return list(compute.input)

    def _engine_output(self, tensor: str) -> tuple[str, str | None]:
        """The engine's tensor its consumers read for the aligned ``tensor`` (a stored copy, else the tensor),
        and the engine's result before it was stored in the precision, where the engine keeps both."""
        if tensor in self.stored_copies:
            return self.stored_copies[tensor], tensor
        unrounded = unrounded_name(tensor)
        return tensor, unrounded if unrounded in self.engine_producers else None

    def _marked_names(self, origin: Tensor, node: onnx.NodeProto, feed: dict) -> tuple[list[str], list[str]]:
        """What to mark to describe ``origin``: its node's computed inputs and its output, in fp32 and in
        the engine (as its consumers read it, and before it was stored)."""
        engine_inputs = self._engine_inputs(origin, node)
        computed = [(r, e) for r, e in zip(node.input, engine_inputs) if r and r not in self.initializers
                    and self._engine_weight(e) is None]
        read, before = self._engine_output(origin.name)
        return ([r for r, _ in computed if r not in feed] + [origin.name],
                [e for _, e in computed if e not in feed] + [read] + ([before] if before else []))

    def _engine_weight(self, name: str) -> np.ndarray | None:
        """A weight as the engine holds it: its initializer, or the stored initializer a Cast reads it from
        (a rounding engine keeps weights in the precision, cast to fp32 once)."""
        if name in self.engine_initializers:
            return numpy_helper.to_array(self.engine_initializers[name])
        producer = self.engine_producers.get(name)
        if producer is not None and producer.op_type == "Cast" and producer.input[0] in self.engine_initializers:
            return numpy_helper.to_array(self.engine_initializers[producer.input[0]])
        return None

    def _input_ranges(self, node: onnx.NodeProto, origin: Tensor, feed: dict, ref_values: dict[str, np.ndarray],
                      eng_values: dict[str, np.ndarray]) -> tuple[list[OperandRange], OutputRange]:
        pairs = [(ref, eng) for ref, eng in zip(node.input, self._engine_inputs(origin, node)) if ref]

        def value(name: str, values: dict, initializers: dict) -> np.ndarray | None:
            if name in values:
                return values[name]
            if name in feed:
                return feed[name]
            if name in initializers:
                return numpy_helper.to_array(initializers[name])
            return None

        inputs = []
        for ref_name, eng_name in pairs:
            ref = value(ref_name, ref_values, self.initializers)
            eng = value(eng_name, eng_values, self.engine_initializers)
            if eng is None:
                eng = self._engine_weight(eng_name)
            producer = self.producers.get(ref_name)
            inputs.append(OperandRange(ref_name, producer.name if producer is not None else None,
                                       producer.op_type if producer is not None else None,
                                       ValueRange.of(ref), ValueRange.of(eng)))
        read, before = self._engine_output(origin.name)
        ref_out, eng_out = ref_values[origin.name], eng_values[read]
        stats = TensorStats()
        stats.add(np.asarray(ref_out), np.asarray(eng_out, dtype=np.float32), 0.0, 0.0)
        output = OutputRange(origin.name, ValueRange.of(ref_out), ValueRange.of(eng_out), stats.precision_nonfinite,
                             stats.elements, ValueRange.of(eng_values[before]) if before else None,
                             read if read != origin.name else None)
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
        for entry in inputs:  # a weight or graph input (no node makes it) the engine stores beyond the range
            ref, eng = entry.fp32, entry.engine
            if entry.producer is None and eng is not None and eng.nonfinite and ref is not None and not ref.nonfinite:
                what = "weight" if entry.name in self.initializers else "graph input"
                return Cause.OVERFLOW_WHEN_STORED, (
                    f"overflow when stored: {what} {entry.name} reaches {ref.abs_max:.3g} in fp32, beyond "
                    f"{precision}'s largest finite {largest:g}: stored in {precision} it holds {eng.nonfinite:,} "
                    f"inf, and {op} of it gives {count} inf/NaN")
        before = out.engine_before_storing
        if before is not None and not before.nonfinite and before.abs_max is not None and before.abs_max > largest:
            return Cause.OVERFLOW_WHEN_STORED, (
                f"overflow when stored: {op} computes up to {before.abs_max:.3g}, finite, beyond {precision}'s "
                f"largest finite {largest:g}: stored in {precision}, {count} become inf")
        peak = out.fp32.abs_max
        if peak is not None and peak > largest:
            return Cause.OVERFLOW, (f"overflow: {op} reaches {peak:.3g} in fp32, beyond {precision}'s largest "
                                    f"finite {largest:g}: {count} become inf/NaN")
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
                                                   compared[first.name], module=self.sources.get(first.node))
        else:
            where = f"stage {stage}" if stage else "the graph"
            result.note = (f"no tensor of {where} differs from the fp32 ONNX graph beyond tolerance: the divergence "
                           "from PyTorch is in the fp32 export itself")
        result.seconds = time.perf_counter() - start
        return result

    # ------------------------------------------------------------------------------------ origin or propagator
    def judge_roles(self, level: Localisation, feed: dict, atol: float, rtol: float) -> None:
        """Origin or propagator on the path from each node ``level`` names (its precision origins, its first
        divergent node) towards the first probe, each node run alone at the engine's precision on fp32's
        inputs; each named node once per localiser (the report's engine-level finding is its first input's).
        Sets the findings' ``roles``: one marked fp32 run for the input, then one small session per node."""
        named = [f for f in (level.first_nonfinite, *level.more_nonfinite, level.first_divergent)
                 if f is not None and f.node not in self._judged
                 and not (isinstance(f, NonfiniteOrigin) and f.kind is NonfiniteKind.FP32)]
        if not named:
            return
        start = time.perf_counter()
        self._judged.update(f.node for f in named)
        paths = {f.node: self._path_to_probe(f.tensor) for f in named}
        if self.engine.tensor_statistics is not None:
            note = (f"not replayed: {self.engine.name}'s backend compiles its own fused kernels from the graph, "
                    "which no ONNX node run alone reproduces")
            roles = {node: ReplayedPath([], probe, len(tensors), atol, rtol, note)
                     for node, (tensors, probe) in paths.items()}
        else:
            kept = self._within_budget(paths)
            names = [n for tensors in kept.values() for t in tensors
                     for n in (*self._activations(self.nodes[t.position]), t.name) if n not in feed]
            fp32_values = read_marked(self._run(mark_outputs(self.fp32, list(dict.fromkeys(names))), feed,
                                                "fp32-replay-inputs", fp32=True))
            fp32_values.update(feed)
            level.runs += 1
            roles = {}
            for node, tensors in kept.items():
                replayed = [self._replay(t, fp32_values, atol, rtol) for t in tensors]
                level.runs += sum(r.role is not None for r in replayed)
                roles[node] = ReplayedPath(replayed, paths[node][1], len(paths[node][0]), atol, rtol)
        level.first_nonfinite = self._with_roles(level.first_nonfinite, roles)
        level.more_nonfinite = [self._with_roles(o, roles) for o in level.more_nonfinite]
        level.first_divergent = self._with_roles(level.first_divergent, roles)
        level.seconds += time.perf_counter() - start

    @staticmethod
    def _with_roles(finding: NonfiniteOrigin | DivergentNode | None, roles: dict[str, ReplayedPath]
                    ) -> NonfiniteOrigin | DivergentNode | None:
        return dataclasses.replace(finding, roles=roles[finding.node]) if finding and finding.node in roles \
            else finding

    def _activations(self, node: onnx.NodeProto) -> list[str]:
        """The inputs of an fp32 node that are not weights."""
        return [name for name in node.input if name and name not in self.initializers]

    def _path_to_probe(self, start: str) -> tuple[list[Tensor], str | None]:
        """The aligned tensors from ``start`` down the shortest path to a graph output (a probe), and that
        output; ``start`` alone and None when it reaches none."""
        outputs = {o.name for o in self.fp32.graph.output}
        consumers: dict[str, list[int]] = {}
        for position, node in enumerate(self.nodes):
            for name in dict.fromkeys(node.input):
                consumers.setdefault(name, []).append(position)
        came_from: dict[str, str | None] = {start: None}
        queue = deque([start])
        while queue:
            name = queue.popleft()
            if name in outputs:
                path = [name]
                while came_from[path[-1]] is not None:
                    path.append(came_from[path[-1]])
                return [self.by_name[n] for n in reversed(path)], name
            for position in consumers.get(name, []):
                for out in self.nodes[position].output:
                    if out in self.by_name and out not in came_from:
                        came_from[out] = name
                        queue.append(out)
        return [self.by_name[start]], None

    def _within_budget(self, paths: dict[str, tuple[list[Tensor], str | None]]) -> dict[str, list[Tensor]]:
        """Each path's first ``MAX_REPLAYED_NODES`` nodes, fewer where their inputs and outputs would mark more
        than ``MARKED_BYTES_PER_RUN`` in all (each path keeps its named node)."""
        budget, kept = MARKED_BYTES_PER_RUN, {}
        for node, (tensors, _) in paths.items():
            kept[node] = []
            for tensor in tensors[:MAX_REPLAYED_NODES]:
                names = {*self._activations(self.nodes[tensor.position]), tensor.name}
                size = 4 * sum(self._sizes.get(n, 0) for n in names)
                if kept[node] and size > budget:
                    break
                budget -= size
                kept[node].append(tensor)
        return kept

    def _replay(self, tensor: Tensor, fp32_values: dict[str, np.ndarray], atol: float, rtol: float
                ) -> ReplayedNode:
        """The node that makes ``tensor``, run alone as the engine computes it on fp32's values of its inputs,
        against fp32's ``tensor``."""
        node = self.nodes[tensor.position]
        which = {"node": node.name, "op_type": node.op_type, "tensor": tensor.name,
                 "module": self.sources.get(node.name)}
        if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute):
            return ReplayedNode(**which, role=None, skipped="not replayed: a control-flow node, whose body reads "
                                                            "values from the graph around it")
        try:
            model, feed, reads = self._alone(node, tensor, fp32_values)
            with self.engine.runner_for(model, f"{self.engine.name}-alone") as runner:
                alone = read_marked(dict(runner.infer(feed)))
            stats = TensorStats()
            stats.add(np.asarray(fp32_values[tensor.name]),
                      np.asarray(alone[self._engine_output(tensor.name)[0]], dtype=np.float32), atol, rtol)
        except ReplayUnavailable as why:
            return ReplayedNode(**which, role=None, skipped=f"not replayed: {why}")
        except (*REPLAY_ERRORS, ValueError) as error:
            first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            return ReplayedNode(**which, role=None, skipped=f"not run alone on {self.engine.name}'s backend: "
                                                            f"{first_line}")
        unheld = sum(int((np.isfinite(np.asarray(fp32_values[r], np.float64))
                          & ~np.isfinite(np.asarray(alone[e], np.float64))).sum()) for r, e in reads)
        makes_error = stats.precision_nonfinite > 0 or not stats.passed
        role = NodeRole.ORIGIN if makes_error and not unheld else NodeRole.PROPAGATOR
        return ReplayedNode(**which, role=role, own_error=stats.max_abs_err if stats.finite_pairs else None,
                            own_nonfinite=stats.precision_nonfinite, elements=stats.elements,
                            inputs_nonfinite=unheld)

    def _alone(self, node: onnx.NodeProto, tensor: Tensor, fp32_values: dict[str, np.ndarray]
               ) -> tuple[onnx.ModelProto, dict[str, np.ndarray], list[tuple[str, str]]]:
        """The engine's computation of ``tensor`` cut out of its graph: from the tensors in which the engine
        holds the node's inputs (fed fp32's values, stored in the engine's type by a Cast where that is a
        reduced precision) through the engine's own casts, weights and node to ``tensor`` as the consumers
        read it. Returns the model (the output and what the node reads marked), its feed, and (fp32 input,
        engine tensor the node reads) pairs."""
        if self._extractor is None:
            self._extractor = onnx.utils.Extractor(onnx.shape_inference.infer_shapes(self.engine.onnx_model))
        types = self._extractor.value_infos
        compute = self._compute_node(tensor.name, node.op_type)
        if compute is None or len(compute.input) != len(node.input):
            raise ReplayUnavailable(f"no node of {self.engine.name}'s graph computes {tensor.name} from the same "
                                    "inputs")
        fed: dict[str, str] = {}  # engine tensor fed -> the fp32 tensor whose value it takes
        reads = []
        for fp32_name, engine_name in zip(node.input, compute.input):
            if fp32_name and fp32_name not in self.initializers:
                fed[fp32_name if fp32_name in types else engine_name] = fp32_name
                reads.append((fp32_name, engine_name))
        output = self._engine_output(tensor.name)[0]
        untyped = [n for n in [*fed, output] if n not in types]
        if untyped:
            raise ReplayUnavailable(f"{untyped[0]} has no type in {self.engine.name}'s graph")
        cut = self._extractor.extract_model(list(fed), [output])
        computing = [n.op_type for n in cut.graph.node if n.op_type not in STORAGE_OPS]
        if len(computing) > 1:
            raise ReplayUnavailable(f"the engine computes it with {len(computing)} nodes ({', '.join(computing)}) "
                                    "between the tensors it holds its inputs in and its output")
        # Types from the engine's graph, shapes from the values (inference cannot always follow a Loop's).
        del cut.graph.value_info[:]
        for value in cut.graph.output:
            value.type.tensor_type.ClearField("shape")
        feed: dict[str, np.ndarray] = {}
        stores = []
        for graph_input in cut.graph.input:
            name, value = graph_input.name, np.asarray(fp32_values[fed[graph_input.name]])
            element = graph_input.type.tensor_type.elem_type
            if element in LOW_PRECISION_TYPES:  # fed in fp32, stored by a Cast as the engine stores it
                graph_input.name = f"{name}{EXACT_INPUT}"
                element, stored = onnx.TensorProto.FLOAT, element
                stores.append(helper.make_node("Cast", [graph_input.name], [name], name=f"{name}_stored", to=stored))
            graph_input.type.CopyFrom(helper.make_tensor_type_proto(element, value.shape))
            feed[graph_input.name] = value.astype(helper.tensor_dtype_to_np_dtype(element))
        nodes = [*stores, *cut.graph.node]
        del cut.graph.node[:]
        cut.graph.node.extend(nodes)
        made = {out for n in cut.graph.node for out in n.output}
        reads = [(fp32_name, engine_name) for fp32_name, engine_name in reads if engine_name in made]
        return mark_outputs(cut, [output, *dict.fromkeys(e for _, e in reads)]), feed, reads


class ReplayUnavailable(Exception):
    """Why a node cannot be run alone as the engine computes it."""
