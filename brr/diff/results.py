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

from brr.diff.compare import EigenspaceStats, SelectionStats, TensorStats
from brr.onnx.statistics import TensorRange

# Least to most severe; an engine's (and the report's) verdict is the most severe of its inputs'.
VERDICTS = ("clean", "basis_ambiguous", "nonfinite_input", "divergence", "nonfinite_precision", "nonfinite_fp32")
FAILING = {
    "nonfinite": {"nonfinite_precision", "nonfinite_fp32"},
    "divergence": {"divergence", "nonfinite_precision", "nonfinite_fp32"},
    "never": set(),
}
REDUCED_PRECISIONS = ("fp16", "bf16")
# (largest finite, smallest normal, smallest subnormal) of the reduced precisions an engine may store in.
PRECISION_LIMITS: dict[str, tuple[float, float, float]] = {
    "fp16": (65504.0, 2.0**-14, 2.0**-24),
    "bf16": (3.3895e38, 2.0**-126, 2.0**-133),
}
# Verdicts of values non-finite in the engine only ("precision") or already in fp32.
NONFINITE_KINDS = {"nonfinite_precision": "precision", "nonfinite_fp32": "fp32"}
# Localisation.observed_by, in words.
OBSERVATION = {
    "instrumented_graph": "statistics nodes in a copy of its graph",
    "debug_tensors": "TensorRT debug tensors of the engine as built (its fusions kept)",
    "marked_debug_tensors": "TensorRT debug tensors marked one by one (not fused across)",
    "marked_outputs": "a copy with the tensors marked as outputs (origin details, bisection)",
}


def most_severe(verdicts) -> str:
    return max(verdicts, key=VERDICTS.index, default="clean")


def json_floats(value):
    """JSON has no inf/NaN: write them as strings (the schema allows it where they can occur)."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: json_floats(v) for k, v in value.items()}
    if isinstance(value, list):
        return [json_floats(v) for v in value]
    return value


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
    first_nonfinite: dict | None = None
    # Further places on the same input where values go non-finite from finite inputs (independent faults).
    more_nonfinite: list[dict] = field(default_factory=list)
    first_divergent: dict | None = None
    note: str | None = None
    # tensor name -> (fp32 range, engine range) of a statistics scan, for the per-node plot.
    ranges: dict[str, tuple[TensorRange, TensorRange]] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"method": self.method, "runs": self.runs, "seconds": round(self.seconds, 3),
                "reproduced": self.reproduced, "reproduction_error": self.reproduction_error,
                "first_nonfinite": self.first_nonfinite, "more_nonfinite": self.more_nonfinite,
                "first_divergent": self.first_divergent,
                "note": self.note, "observed_by": self.observed_by, "unobserved": self.unobserved}

    def observed(self, method: str) -> None:
        if method not in self.observed_by:
            self.observed_by.append(method)


@dataclass
class StageResult:
    status: str
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
    verdict: str
    first_divergent_stage: str | None  # first stage beyond tolerance with finite values (or basis-ambiguous)
    stages: dict[str, StageResult]
    node_level: Localisation | None = None
    first_nonfinite_stage: str | None = None
    # Non-finite values inside the engine that every probe hides (node level found them).
    nonfinite_hidden: bool = False

    def to_dict(self) -> dict:
        return {"input": self.input, "verdict": self.verdict, "first_nonfinite_stage": self.first_nonfinite_stage,
                "nonfinite_hidden": self.nonfinite_hidden,
                "first_divergent_stage": self.first_divergent_stage,
                "stages": {k: v.to_dict() for k, v in self.stages.items()},
                "node_level": json_floats(self.node_level.to_dict()) if self.node_level is not None else None}


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
    def verdict(self) -> str:
        return most_severe(i.verdict for i in self.inputs)

    @property
    def first_nonfinite_stage(self) -> str | None:
        return next((i.first_nonfinite_stage for i in self.inputs if i.first_nonfinite_stage), None)

    @property
    def first_divergent_stage(self) -> str | None:
        """First stage beyond tolerance, from the inputs that only diverge (never a non-finite input's)."""
        for verdict in ("divergence", "basis_ambiguous"):
            found = next((i.first_divergent_stage for i in self.inputs if i.verdict == verdict), None)
            if found:
                return found
        return None

    @property
    def origins(self) -> list[dict]:
        """Every distinct node where non-finite values start, each on the first input it was found on."""
        found: dict[str, dict] = {}
        for i in self.inputs:
            level = i.node_level
            if level is not None and level.first_nonfinite:
                for origin in [level.first_nonfinite, *level.more_nonfinite]:
                    found.setdefault(origin["node"], origin | {"input": i.input})
        return list(found.values())

    @property
    def origin(self) -> dict | None:
        """The first of ``origins``."""
        return next(iter(self.origins), None)

    @property
    def first_divergent_node(self) -> dict | None:
        return next((i.node_level.first_divergent | {"input": i.input} for i in self.inputs
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
        tensors), and which it could not observe."""
        levels = [i.node_level for i in self.inputs if i.node_level is not None]
        methods = list(dict.fromkeys(m for level in levels for m in level.observed_by))
        if not {"debug_tensors", "marked_debug_tensors"} & set(methods):
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
            "first_divergent_stage": self.first_divergent_stage, "origin": json_floats(self.origin),
            "origins": json_floats(self.origins),
            "first_divergent_node": json_floats(self.first_divergent_node),
            "node_level_notes": self.node_level_notes,
            "stages": {k: json_floats(v.to_dict()) for k, v in self.stages.items()},
            "inputs": [i.to_dict() for i in self.inputs],
            "nodes": [n.to_dict() for n in self.nodes.values()],
        }


@dataclass
class DiffReport:
    reference: str
    fail_on: str
    inputs: list[str] = field(default_factory=list)
    engines: list[EngineResult] = field(default_factory=list)
    cost: dict = field(default_factory=dict)
    # How the inputs were given on the command line, for the next-step commands (e.g. "--synthetic 2").
    data_arguments: list[str] = field(default_factory=list)

    @property
    def verdict(self) -> str:
        return most_severe(e.verdict for e in self.engines)

    @property
    def failed(self) -> bool:
        return any(e.verdict in FAILING[self.fail_on] for e in self.engines)

    def engine(self, name: str) -> EngineResult:
        return next(e for e in self.engines if e.name == name)

    def next_steps(self) -> list[str]:
        """The commands that fix a reduced-precision engine that went non-finite or diverged."""
        steps = []
        for e in self.engines:
            if e.precision not in REDUCED_PRECISIONS or e.verdict not in ("nonfinite_precision", "divergence"):
                continue
            plan_dir = f"calibration-{e.precision}"
            data = self.data_arguments or ["--synthetic", "2"]
            steps.append(shlex.join(["brr-calibrate", self.reference, *data, "--precision", e.precision,
                                     "--out", plan_dir]))
            steps.append(shlex.join(["brr-export", self.reference, "--engine", e.precision, "--precision-plan",
                                     f"{plan_dir}/precision_plan.json", "--out", f"export-{e.precision}-planned"]))
        return list(dict.fromkeys(steps))

    def to_dict(self) -> dict:
        return {"schema_version": SCHEMA_VERSION, "tool": "brr-diff", "reference": self.reference,
                "fail_on": self.fail_on, "verdict": self.verdict, "inputs": self.inputs, "cost": self.cost,
                "next_steps": self.next_steps(), "engines": [e.to_dict() for e in self.engines]}


SCHEMA_VERSION = "2.0"
