"""What a diff found: statistics per engine, input, stage and node, the verdicts, and the next step.

Rendering (JSON, Markdown, HTML, plots) is ``brr.diff.report``'s; this module holds the results and
the reasoning over them: an engine's verdict is its worst input's, the first stage with non-finite
values is kept apart from the first stage beyond tolerance, and the origin of non-finite values is
node level's finding, never a stage.
"""

from __future__ import annotations

import dataclasses
import math
import shlex
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum

import numpy as np

from brr.diff.compare import EigenspaceStats, EventAgreement, SelectionStats, TensorStats
from brr.diff.verdict import FailOn, NonfiniteKind, Verdict
from brr.onnx.source import ModuleSource
from brr.onnx.statistics import TensorRange

REDUCED_PRECISIONS = ("fp16", "bf16")
# (largest finite, smallest normal, smallest subnormal) of the reduced precisions an engine may store in.
PRECISION_LIMITS: dict[str, tuple[float, float, float]] = {
    "fp16": (65504.0, 2.0**-14, 2.0**-24),
    "bf16": (3.3895e38, 2.0**-126, 2.0**-133),
}
# Localisation.observed_by, in words.
OBSERVATION = {
    "instrumented_graph": "statistics nodes in a copy of its graph",
    "debug_tensors": "TensorRT debug tensors of the engine as built (its fusions kept)",
    "marked_debug_tensors": "TensorRT debug tensors marked one by one (not fused across)",
    "marked_outputs": "a copy with the tensors marked as outputs (origin details, bisection)",
    "openvino_outputs": "the OpenVINO model compiled with the tensors it keeps as extra outputs",
}


def json_floats(value):
    """JSON has no inf/NaN: write them as strings (the schema allows it where they can occur)."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: json_floats(v) for k, v in value.items()}
    if isinstance(value, list):
        return [json_floats(v) for v in value]
    return value


class Cause(StrEnum):
    """Why values went non-finite at an origin."""

    OVERFLOW = "overflow"  # beyond the precision's largest finite value
    # A finite fp32 value (a result computed in fp32, a weight, an input) beyond the largest finite value of
    # the precision it is stored in: the store makes it inf.
    OVERFLOW_WHEN_STORED = "overflow when stored"
    UNDERFLOW = "underflow"  # below its smallest normal, flushed to 0, then divided by or the like
    CANCELLATION = "cancellation"  # digits lost to rounding upstream (a difference of near-equal values)
    FP32 = "fp32"  # already non-finite in fp32
    UNKNOWN = "unknown"
    # Within one operation from finite inputs (``brr.train.nonfinite`` names them; node level does not yet):
    ZERO_DIVIDED_BY_ZERO = "0/0"
    DIVISION_BY_ZERO = "division by zero"  # a non-zero value over 0, or 1/0: +-inf
    INVALID_DOMAIN = "outside the function's domain"  # log of x <= 0, sqrt of x < 0, ...
    INF_MINUS_INF = "inf - inf"  # intermediates (a sum's terms) overflow with both signs: NaN


@dataclass(frozen=True)
class ValueRange:
    """Counts and magnitudes of one tensor's values: what decides overflow and underflow."""

    min: float | None
    max: float | None
    abs_max: float | None
    abs_min_nonzero: float | None
    zeros: int
    nonfinite: int
    elements: int

    @classmethod
    def of(cls, array) -> ValueRange | None:
        if array is None:
            return None
        values = np.asarray(array, dtype=np.float64)
        finite = values[np.isfinite(values)]
        magnitudes = np.abs(finite)
        nonzero = magnitudes[magnitudes > 0]
        return cls(min=float(finite.min()) if finite.size else None,
                   max=float(finite.max()) if finite.size else None,
                   abs_max=float(magnitudes.max()) if finite.size else None,
                   abs_min_nonzero=float(nonzero.min()) if nonzero.size else None,
                   zeros=int(finite.size - nonzero.size), nonfinite=int(values.size - finite.size),
                   elements=int(values.size))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _range_dict(value: ValueRange | None) -> dict | None:
    return None if value is None else value.to_dict()


@dataclass(frozen=True)
class OperandRange:
    """One input of an origin's node, in fp32 and in the engine (None where it has no value)."""

    name: str
    producer: str | None  # the fp32 node that makes it; None for a graph input or a weight
    producer_op: str | None
    fp32: ValueRange | None
    engine: ValueRange | None

    def to_dict(self) -> dict:
        return {"name": self.name, "producer": self.producer, "producer_op": self.producer_op,
                "fp32": _range_dict(self.fp32), "engine": _range_dict(self.engine)}


@dataclass(frozen=True)
class OutputRange:
    """The origin's tensor, in fp32 and in the engine."""

    name: str
    fp32: ValueRange
    engine: ValueRange
    precision_nonfinite: int  # elements non-finite in the engine and finite in fp32
    elements: int
    # A rounding engine's result before it is stored in the precision (``brr.onnx.precision``).
    engine_before_storing: ValueRange | None = None
    # The engine's tensor its consumers read, where that is not ``name``: the copy a rounding engine stores
    # in the precision of a result it keeps in fp32 (a probe, a pinned node's result).
    read_as: str | None = None

    def to_dict(self) -> dict:
        out = {"name": self.name, "fp32": self.fp32.to_dict(), "engine": self.engine.to_dict(),
               "precision_nonfinite": self.precision_nonfinite, "elements": self.elements}
        if self.engine_before_storing is not None:
            out["engine_before_storing"] = self.engine_before_storing.to_dict()
        if self.read_as is not None:
            out["read_as"] = self.read_as
        return out


@dataclass(frozen=True)
class NodeRef:
    """A node named in a finding."""

    node: str
    op_type: str
    stage: str | None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


class NodeRole(StrEnum):
    """What a node does to the error, judged by running it alone at the engine's precision on fp32's inputs."""

    ORIGIN = "origin"  # its own result is non-finite or beyond tolerance: it makes error
    PROPAGATOR = "propagator"  # its own result is within tolerance: it carries the error it receives


@dataclass(frozen=True)
class ReplayedNode:
    """One node on the path from a named node to a probe, run alone (``brr.diff.localise``)."""

    node: str
    op_type: str
    tensor: str  # its output on the path
    module: ModuleSource | None
    role: NodeRole | None  # None: not replayed (``skipped`` says why)
    own_error: float | None = None  # max |alone - fp32| over the elements finite in both
    own_nonfinite: int = 0  # elements non-finite alone where fp32 is finite
    elements: int = 0
    # Elements of its inputs the precision cannot hold (finite in fp32, non-finite once stored): a
    # propagator whatever it gives, the producer's store made them.
    inputs_nonfinite: int = 0
    skipped: str | None = None

    def to_dict(self) -> dict:
        return {"node": self.node, "op_type": self.op_type, "tensor": self.tensor,
                "module": _dict_or_none(self.module), "role": self.role, "own_error": self.own_error,
                "own_nonfinite": self.own_nonfinite, "elements": self.elements,
                "inputs_nonfinite": self.inputs_nonfinite, "skipped": self.skipped}


@dataclass(frozen=True)
class ReplayedPath:
    """Origin or propagator, node by node, from a named node towards the first probe it reaches."""

    nodes: list[ReplayedNode]  # the first nodes of the path, the named one first
    probe: str | None  # the probe (graph output) the path reaches; None where it reaches none
    path_length: int  # nodes from the named one to the probe's
    atol: float
    rtol: float
    note: str | None = None  # why nothing was replayed

    def to_dict(self) -> dict:
        return {"nodes": [n.to_dict() for n in self.nodes], "probe": self.probe, "path_length": self.path_length,
                "atol": self.atol, "rtol": self.rtol, "note": self.note}


@dataclass(frozen=True)
class NonfiniteOrigin:
    """A node whose output goes non-finite from finite inputs: where, how, why, and what hid it."""

    node: str
    op_type: str
    stage: str | None
    tensor: str
    kind: NonfiniteKind
    inputs: list[OperandRange]
    output: OutputRange
    hidden_by: list[NodeRef]  # the first downstream nodes that take a non-finite input and give finite outputs
    hidden_by_count: int
    nonfinite_outputs: list[str]  # graph outputs (probes) that are non-finite
    contaminated: int  # compared tensors after it that are non-finite the same way
    cause: Cause
    explanation: str
    # Tensors fused, in the engine as built, into the kernel where the value was first seen non-finite.
    fused_with: list[str] | None = None
    input: str | None = None  # the input it was found on (engine level)
    module: ModuleSource | None = None  # the nn.Module the node was traced in
    roles: ReplayedPath | None = None  # origin or propagator from here towards the first probe

    def to_dict(self) -> dict:
        out = {"node": self.node, "op_type": self.op_type, "stage": self.stage, "tensor": self.tensor,
               "kind": self.kind, "inputs": [i.to_dict() for i in self.inputs], "output": self.output.to_dict(),
               "hidden_by": [h.to_dict() for h in self.hidden_by], "hidden_by_count": self.hidden_by_count,
               "nonfinite_outputs": list(self.nonfinite_outputs), "contaminated": self.contaminated,
               "cause": self.cause, "explanation": self.explanation, "module": _dict_or_none(self.module)}
        if self.roles is not None:
            out["roles"] = self.roles.to_dict()
        if self.fused_with is not None:
            out["fused_with"] = list(self.fused_with)
        if self.input is not None:
            out["input"] = self.input
        return out


@dataclass(frozen=True)
class DivergentNode:
    """The first node whose output is beyond tolerance (bisection), with its statistics."""

    node: str
    op_type: str
    stage: str | None
    tensor: str
    stats: TensorStats
    input: str | None = None  # the input it was found on (engine level)
    module: ModuleSource | None = None  # the nn.Module the node was traced in
    roles: ReplayedPath | None = None  # origin or propagator from here towards the first probe

    def to_dict(self) -> dict:
        out = {"node": self.node, "op_type": self.op_type, "stage": self.stage, "tensor": self.tensor,
               "stats": self.stats.to_dict(), "module": _dict_or_none(self.module)}
        if self.roles is not None:
            out["roles"] = self.roles.to_dict()
        if self.input is not None:
            out["input"] = self.input
        return out


@dataclass
class Localisation:
    """What node level found on one input, and what it cost."""

    method: str  # "statistics" (non-finite origin) or "bisection" (first node beyond tolerance)
    runs: int = 0
    # How the engine's tensors were read, in order: "instrumented_graph" (statistics nodes in a copy of its
    # graph), "debug_tensors" (TensorRT debug tensors of the engine as built), "marked_debug_tensors"
    # (debug tensors TensorRT may not fuse across), "marked_outputs" (a copy with the tensors as outputs).
    observed_by: list[str] = field(default_factory=list)
    # Compared tensors the engine computed without storing them (fused): no statistics on the engine side.
    unobserved: list[str] = field(default_factory=list)
    seconds: float = 0.0
    reproduced: bool | None = None
    reproduction_error: float = 0.0
    first_nonfinite: NonfiniteOrigin | None = None
    # Further places on the same input where values go non-finite from finite inputs (independent faults).
    more_nonfinite: list[NonfiniteOrigin] = field(default_factory=list)
    first_divergent: DivergentNode | None = None
    note: str | None = None
    # tensor name -> (fp32 range, engine range) of a statistics scan, for the per-node plot.
    ranges: dict[str, tuple[TensorRange, TensorRange]] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"method": self.method, "runs": self.runs, "seconds": round(self.seconds, 3),
                "reproduced": self.reproduced, "reproduction_error": self.reproduction_error,
                "first_nonfinite": _dict_or_none(self.first_nonfinite),
                "more_nonfinite": [o.to_dict() for o in self.more_nonfinite],
                "first_divergent": _dict_or_none(self.first_divergent),
                "note": self.note, "observed_by": self.observed_by, "unobserved": self.unobserved}

    def observed(self, method: str) -> None:
        if method not in self.observed_by:
            self.observed_by.append(method)


def _dict_or_none(finding: NonfiniteOrigin | DivergentNode | ModuleSource | None) -> dict | None:
    return None if finding is None else finding.to_dict()


@dataclass
class StageResult:
    status: Verdict
    stats: TensorStats
    eigenspace: EigenspaceStats | None = None
    selection: SelectionStats | None = None

    def to_dict(self) -> dict:
        out = {"status": self.status, "stats": json_floats(self.stats.to_dict())}
        if self.eigenspace is not None:
            out["eigenspace"] = self.eigenspace.to_dict()
        if self.selection is not None:
            out["selection"] = json_floats(self.selection.to_dict())
        return out


@dataclass
class InputResult:
    input: str
    verdict: Verdict
    first_divergent_stage: str | None  # first stage beyond tolerance with finite values (or basis-ambiguous)
    stages: dict[str, StageResult]
    node_level: Localisation | None = None
    first_nonfinite_stage: str | None = None
    # Non-finite values inside the engine that every probe hides (node level found them).
    nonfinite_hidden: bool = False
    # The served events against fp32's (None where the outputs hold no logits).
    events: EventAgreement | None = None
    # Stages beyond tolerance on an input whose served outputs pass: localisation's, not the verdict's.
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"input": self.input, "verdict": self.verdict, "first_nonfinite_stage": self.first_nonfinite_stage,
                "nonfinite_hidden": self.nonfinite_hidden,
                "events": None if self.events is None else self.events.to_dict(), "warnings": list(self.warnings),
                "first_divergent_stage": self.first_divergent_stage,
                "stages": {k: v.to_dict() for k, v in self.stages.items()},
                "node_level": json_floats(self.node_level.to_dict()) if self.node_level is not None else None}

    def found_nonfinite(self, kind: NonfiniteKind, stage: str | None) -> None:
        """Node level found values of ``kind`` non-finite inside the engine, first at ``stage``: the verdict
        says so even where every probe is finite (a guard's clamp or nan_to_num hid them: hidden, not
        harmless)."""
        if kind.verdict != self.verdict and self.verdict is not Verdict.NONFINITE_FP32:
            self.verdict = kind.verdict
            self.nonfinite_hidden = self.first_nonfinite_stage is None
            self.first_nonfinite_stage = self.first_nonfinite_stage or stage


@dataclass
class NodeRange:
    """One compared tensor over the inputs node level scanned: its magnitudes and where it went non-finite."""

    tensor: str
    node: str
    op_type: str
    stage: str | None
    fp32_abs_max: float = 0.0
    engine_abs_max: float = 0.0
    engine_nonfinite_inputs: list[str] = field(default_factory=list)
    fp32_nonfinite_inputs: list[str] = field(default_factory=list)

    def add(self, ref: TensorRange, eng: TensorRange, label: str) -> None:
        if ref.finite:
            self.fp32_abs_max = max(self.fp32_abs_max, ref.abs_max)
        else:
            self.fp32_nonfinite_inputs.append(label)
        if eng.finite:
            self.engine_abs_max = max(self.engine_abs_max, eng.abs_max)
        else:
            self.engine_nonfinite_inputs.append(label)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class EngineResult:
    name: str
    precision: str
    atol: float
    rtol: float
    path: str | None = None
    node_level_note: str | None = None
    inputs: list[InputResult] = field(default_factory=list)
    stages: dict[str, TensorStats] = field(default_factory=dict)
    # tensor -> its ranges, in the fp32 graph's topological order
    nodes: dict[str, NodeRange] = field(default_factory=dict)

    def merge_ranges(self, tensors: Iterable, ranges: dict[str, tuple[TensorRange, TensorRange]], label: str
                     ) -> None:
        """Fold one input's ranges of ``tensors`` (node level's aligned tensors, in topological order) in."""
        for tensor in tensors:
            if tensor.name in ranges:
                entry = self.nodes.setdefault(tensor.name, NodeRange(tensor.name, tensor.node, tensor.op_type,
                                                                     tensor.stage))
                entry.add(*ranges[tensor.name], label)

    @property
    def verdict(self) -> Verdict:
        return Verdict.most_severe(i.verdict for i in self.inputs)

    @property
    def first_nonfinite_stage(self) -> str | None:
        return next((i.first_nonfinite_stage for i in self.inputs if i.first_nonfinite_stage), None)

    @property
    def events(self) -> EventAgreement | None:
        """The served events against fp32's over every input that has them."""
        judged = [i.events for i in self.inputs if i.events is not None]
        if not judged:
            return None
        total = EventAgreement()
        for agreement in judged:
            total.merge(agreement)
        return total

    @property
    def warnings(self) -> list[str]:
        """Each stage beyond tolerance on inputs whose served outputs pass, with its largest error."""
        stages = dict.fromkeys(name for i in self.inputs for name in i.warnings)
        return [f"{name} beyond tolerance on {sum(name in i.warnings for i in self.inputs)} input(s) whose "
                f"logits and events match fp32 (max |error| {self.stages[name].max_abs_err:.3g})"
                for name in stages if name in self.stages]

    @property
    def first_divergent_stage(self) -> str | None:
        """First stage beyond tolerance, from the inputs that only diverge (never a non-finite input's)."""
        for verdict in (Verdict.DIVERGENCE, Verdict.BASIS_AMBIGUOUS):
            found = next((i.first_divergent_stage for i in self.inputs if i.verdict == verdict), None)
            if found:
                return found
        return None

    @property
    def origins(self) -> list[NonfiniteOrigin]:
        """Every distinct node where non-finite values start, each on the first input it was found on."""
        found: dict[str, NonfiniteOrigin] = {}
        for i in self.inputs:
            level = i.node_level
            if level is not None and level.first_nonfinite:
                for origin in [level.first_nonfinite, *level.more_nonfinite]:
                    if origin.node not in found:
                        found[origin.node] = dataclasses.replace(origin, input=i.input)
        return list(found.values())

    @property
    def origin(self) -> NonfiniteOrigin | None:
        """The first of ``origins``."""
        return next(iter(self.origins), None)

    @property
    def first_divergent_node(self) -> DivergentNode | None:
        return next((dataclasses.replace(i.node_level.first_divergent, input=i.input) for i in self.inputs
                     if i.node_level is not None and i.node_level.first_divergent), None)

    @property
    def node_level_notes(self) -> list[str]:
        """What node level could not do, said once each."""
        notes = [self.node_level_note] if self.node_level_note else []
        for i in self.inputs:
            level = i.node_level
            if level is not None and level.note and level.note not in notes:
                notes.append(level.note)
            if level is not None and level.reproduced is False:
                message = (f"the instrumented engine did not reproduce the engine's logits on {i.input} "
                           f"(max difference {level.reproduction_error:.3g}): node-level findings there may "
                           "describe another computation")
                notes.append(message)
        observation = self.observation_note()
        if observation:
            notes.append(observation)
        return notes

    def observation_note(self) -> str | None:
        """How node level read the engine's tensors, where the backend read them itself (TensorRT debug
        tensors, OpenVINO outputs), and which it could not observe."""
        levels = [i.node_level for i in self.inputs if i.node_level is not None]
        methods = list(dict.fromkeys(m for level in levels for m in level.observed_by))
        if not {"debug_tensors", "marked_debug_tensors", "openvino_outputs"} & set(methods):
            return None
        unobserved = next((level.unobserved for level in levels if level.unobserved), [])
        note = "node level read the engine's tensors by " + ", then ".join(OBSERVATION[m] for m in methods)
        if unobserved:
            note += (f"; {len(unobserved)} compared tensors were computed inside fused kernels (or stored quantised) "
                     f"and could not be observed there, e.g. {', '.join(unobserved[:5])}")
        return note

    def to_dict(self) -> dict:
        return {
            "name": self.name, "precision": self.precision, "path": self.path, "atol": self.atol, "rtol": self.rtol,
            "verdict": self.verdict, "first_nonfinite_stage": self.first_nonfinite_stage,
            "events": None if self.events is None else self.events.to_dict(), "warnings": self.warnings,
            "first_divergent_stage": self.first_divergent_stage, "origin": json_floats(_dict_or_none(self.origin)),
            "origins": json_floats([o.to_dict() for o in self.origins]),
            "first_divergent_node": json_floats(_dict_or_none(self.first_divergent_node)),
            "node_level_notes": self.node_level_notes,
            "stages": {k: json_floats(v.to_dict()) for k, v in self.stages.items()},
            "inputs": [i.to_dict() for i in self.inputs],
            "nodes": [n.to_dict() for n in self.nodes.values()],
        }


@dataclass
class DiffReport:
    reference: str
    fail_on: FailOn
    inputs: list[str] = field(default_factory=list)
    engines: list[EngineResult] = field(default_factory=list)
    cost: dict = field(default_factory=dict)
    # How the inputs were given on the command line, for the next-step commands (e.g. "--synthetic 2").
    data_arguments: list[str] = field(default_factory=list)
    repro: str | None = None  # the repro bundle the diff wrote (``brr.diff.repro``)
    # Set on a report judged offline from a bundle (``brr-diff --check``): the bundle, inputs saved and run.
    rejudged: dict | None = None

    @property
    def verdict(self) -> Verdict:
        return Verdict.most_severe(e.verdict for e in self.engines)

    @property
    def failed(self) -> bool:
        return any(e.verdict in FailOn(self.fail_on).failing for e in self.engines)

    def engine(self, name: str) -> EngineResult:
        return next(e for e in self.engines if e.name == name)

    def next_steps(self) -> list[str]:
        """The commands that fix a reduced-precision engine that went non-finite or diverged."""
        steps = []
        for e in self.engines:
            if e.precision not in REDUCED_PRECISIONS or e.verdict not in (Verdict.NONFINITE_PRECISION,
                                                                          Verdict.DIVERGENCE):
                continue
            plan_dir = f"calibration-{e.precision}"
            data = self.data_arguments or ["--synthetic", "2"]
            steps.append(shlex.join(["brr-calibrate", self.reference, *data, "--precision", e.precision,
                                     "--out", plan_dir]))
            steps.append(shlex.join(["brr-export", self.reference, "--precision", e.precision, "--precision-plan",
                                     f"{plan_dir}/precision_plan.json", "--out", f"export-{e.precision}-planned"]))
        return list(dict.fromkeys(steps))

    def to_dict(self) -> dict:
        return {"schema_version": SCHEMA_VERSION, "tool": "brr-diff", "reference": self.reference,
                "fail_on": self.fail_on, "verdict": self.verdict, "inputs": self.inputs, "cost": self.cost,
                "next_steps": self.next_steps(), "engines": [e.to_dict() for e in self.engines]} \
            | ({"repro": self.repro} if self.repro else {}) \
            | ({"rejudged": self.rejudged} if self.rejudged else {})


SCHEMA_VERSION = "2.0"
