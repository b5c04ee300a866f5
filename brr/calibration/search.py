"""The search for the fewest nodes an fp16/bf16 engine must keep in fp32.

Acceptance, per window of the calibration set (EDF windows, plus the adversarial suite): every probe
stage (every graph output) of the reduced-precision model is finite wherever the fp32 model is, and
within tolerance by the diff's own probe-level comparator (``brr.diff.run.compare_outputs``:
eigenspaces for ``laplacian_pe``, kept edges for ``adjacency``).

Search (greedy growth from the first offenders, then pruning):

1. Evaluate; at the first failing window, ask the diff's node-level comparison
   (``brr.diff.localise.NodeComparison``) where it starts: the first node whose output is non-finite
   in reduced precision (even when the outputs stay finite: x / inf = 0), or else the first node of
   the first failing stage whose output leaves the tolerance. Pin that node. If it is pinned already
   (or is fp32 anyway), the value reaching it was already ruined in reduced precision: pin its
   nearest unpinned producers instead (walking up through pinned ones). Repeat until accepted.
2. Prune: try to unpin each node, last pinned first; keep the removal when still accepted.

fp16 is evaluated as TensorRT runs fp16 layers: fp16 weights and fp16 storage of every node output
(Loop bodies included), fp32 accumulation inside each kernel (``RoundThroughLowPrecision``: Cast
pairs to fp16 and back after every node, executed by ONNX Runtime with graph optimisations off so the
Casts stay). Overflow to inf, underflow to zero and the rounding between nodes all appear; what
differs from an all-fp16 evaluator is only rounding inside one node's reduction. ONNX Runtime's CPU
provider on the fp16 model itself cannot stand in: it runs chains of nodes lacking fp16 kernels
(Mul -> ReduceSumSquare -> Sqrt -> Div) in fp32 between its own casts, and the planted fp16 overflow
of the tests never appears there. ONNX's reference evaluator on the fp16 model does compute
everything in fp16 but is ~40x slower (87 s per v3-small window on two cores): tests use it to
confirm the plans found here.

bf16 is evaluated on the exporter's bf16 engine (explicit bf16 rounding of every main-graph
activation, fp32 arithmetic) in ONNX Runtime: neither ONNX Runtime's CPU provider nor ONNX's
reference evaluator computes bfloat16 arithmetic, so bf16 accumulation error is not modelled here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST
from polygraphy.logger import G_LOGGER

from brr.diff.compare import TensorStats, reference_spectrum
from brr.diff.engines import Engine, onnxruntime_engine, onnxruntime_runner
from brr.diff.localise import DEFAULT_MAX_MARKED_BYTES, NodeComparison
from brr.diff.report import InputResult
from brr.diff.run import compare_outputs
from brr.diff.stages import node_stages
from brr.export.engines.onnxruntime import (
    FLOAT32_ONLY_OP_TYPES,
    NO_CPU_FP16_KERNEL_OP_TYPES,
    ConvertToFloat16,
    RoundThroughLowPrecision,
)
from brr.model import DetectorConfig

REDUCED_PRECISIONS = ("fp16", "bf16")
ACCEPTED_VERDICTS = ("clean", "basis_ambiguous")
# Node types the fp16 conversion keeps in fp32 whatever the plan says (see ConvertToFloat16).
ALWAYS_FP32_OP_TYPES = frozenset([*DEFAULT_OP_BLOCK_LIST, *FLOAT32_ONLY_OP_TYPES, *NO_CPU_FP16_KERNEL_OP_TYPES])


class SearchError(RuntimeError):
    """The search cannot make the model acceptable (budget spent, or a failure no pin can reach)."""


@dataclass
class Pin:
    node: str
    op_type: str
    stage: str | None
    reason: str  # "nonfinite", "nonfinite_input", "tolerance", "tolerance_input"
    window: str
    engine: str
    evidence: dict

    def to_dict(self) -> dict:
        return {"node": self.node, "op_type": self.op_type, "stage": self.stage, "reason": self.reason,
                "window": self.window, "found_by": self.engine, "evidence": self.evidence}


@dataclass
class Evaluation:
    """Probe-level results of one engine over windows (stopping at the first failure when asked)."""

    engine: str
    inputs: list[InputResult] = field(default_factory=list)
    stages: dict[str, TensorStats] = field(default_factory=dict)

    @property
    def failure(self) -> InputResult | None:
        return next((i for i in self.inputs if i.verdict not in ACCEPTED_VERDICTS), None)

    @property
    def accepted(self) -> bool:
        return self.failure is None


class PlanSearch:
    """fp32 ONNX graph (all probes as outputs) + windows -> the pinned node set of an accepted plan."""

    def __init__(self, fp32_model: onnx.ModelProto, precision: str, windows: list[tuple[str, dict]],
                 atol: float, rtol: float, config: DetectorConfig | None = None,
                 pinnable: set[str] | None = None, max_pins: int = 64,
                 max_marked_bytes: int = DEFAULT_MAX_MARKED_BYTES, say: Callable[[str], None] = lambda _: None):
        if precision not in REDUCED_PRECISIONS:
            raise ValueError(f"precision must be one of {REDUCED_PRECISIONS}, got {precision!r}")
        if not windows:
            raise ValueError("no calibration windows")
        self.fp32 = fp32_model
        self.precision, self.atol, self.rtol = precision, atol, rtol
        self.windows = dict(windows)
        self.config = config
        self.nodes = {n.name: n for n in fp32_model.graph.node}
        self.stages = node_stages(fp32_model)
        self.producer = {out: n.name for n in fp32_model.graph.node for out in n.output}
        self.always_fp32 = {name for name, n in self.nodes.items() if n.op_type in ALWAYS_FP32_OP_TYPES}
        self.pinnable = {name for name, n in self.nodes.items()
                         if n.op_type not in ALWAYS_FP32_OP_TYPES and n.op_type != "Constant"
                         and (pinnable is None or name in pinnable)}
        self.max_pins, self.max_marked_bytes, self.say = max_pins, max_marked_bytes, say
        self.pins: dict[str, Pin] = {}
        self.order = list(self.windows)  # windows that failed last are evaluated first
        self.reference = self._reference_outputs()
        self.evaluations = 0

    # ------------------------------------------------------------------------------ engines
    def reduced_model(self, pinned: set[str] | list[str]) -> onnx.ModelProto:
        """The exporter's conversion of the fp32 graph with ``pinned`` kept fp32."""
        copy = onnx.ModelProto.FromString(self.fp32.SerializeToString())
        if self.precision == "bf16":
            return RoundThroughLowPrecision(copy, sorted(pinned), "bf16")()
        return ConvertToFloat16(copy, sorted(pinned))()

    def engine(self, pinned: set[str] | list[str]) -> Engine:
        """The engine that judges a pinned set (see the module docstring)."""
        if self.precision == "fp16":
            copy = onnx.ModelProto.FromString(self.fp32.SerializeToString())
            model = RoundThroughLowPrecision(copy, sorted({*pinned, *self.always_fp32}), "fp16", subgraphs=True)()
        else:
            model = self.reduced_model(pinned)
        # Optimisations off: the explicit rounding Casts stay where the conversion put them.
        return onnxruntime_engine(model, self.fp32, name=f"onnxruntime-{self.precision}-rounded",
                                  precision=self.precision, optimize=False)

    def _reference_outputs(self) -> dict[str, dict[str, np.ndarray]]:
        outputs = {}
        with G_LOGGER.verbosity(G_LOGGER.ERROR), onnxruntime_runner(self.fp32, "fp32-onnx") as runner:
            for label, feed in self.windows.items():
                outputs[label] = {k: np.asarray(v) for k, v in runner.infer(feed).items()}
        return outputs

    def _spectrum(self, ref_out: dict) -> tuple | None:
        cfg = self.config
        if cfg is None or "adjacency" not in ref_out or not cfg.use_dynamic_pe:
            return None
        values, vectors = reference_spectrum(ref_out["adjacency"], cfg.semi_dynamic_interval, cfg.degree_clamp,
                                             cfg.laplacian_shift)
        return values, vectors, cfg.semi_dynamic_interval

    # ------------------------------------------------------------------------------ evaluation
    def evaluate(self, engine: Engine, stop_at_failure: bool = True) -> Evaluation:
        self.evaluations += 1
        result = Evaluation(engine.name)
        with G_LOGGER.verbosity(G_LOGGER.ERROR), engine.runner as runner:
            for label in list(self.order):
                feed, ref_out = self.windows[label], self.reference[label]
                outcome = compare_outputs(label, feed, ref_out, runner.infer(feed), self._spectrum(ref_out),
                                          self.atol, self.rtol, self.config.edge_top_k if self.config else None)
                result.inputs.append(outcome)
                for name, stage in outcome.stages.items():
                    result.stages.setdefault(name, TensorStats()).merge(stage.stats)
                if outcome.verdict not in ACCEPTED_VERDICTS:
                    self.order.remove(label)
                    self.order.insert(0, label)
                    if stop_at_failure:
                        break
        return result

    # ------------------------------------------------------------------------------ one greedy step
    def step(self, failure: InputResult) -> list[Pin]:
        """Pin what makes ``failure`` fail (see the module docstring); returns the new pins."""
        engine = self.engine(set(self.pins))
        comparison = NodeComparison(engine, batch=1, max_marked_bytes=self.max_marked_bytes)
        feed = self.windows[failure.input]
        if failure.verdict not in ("nonfinite_precision", "divergence"):
            raise SearchError(f"window {failure.input}: verdict {failure.verdict}: not a precision problem a plan "
                              "can fix (non-finite input or already non-finite in fp32)")
        # A non-finite node output is the first suspect even when the outputs stay finite (x / inf = 0).
        localised = comparison.localise(feed, self.atol, self.rtol, "precision")
        if localised.first_nonfinite is not None:
            offender, evidence, reason = localised.first_nonfinite["node"], localised.first_nonfinite, "nonfinite"
        elif failure.verdict == "nonfinite_precision":
            raise SearchError(f"window {failure.input}: {engine.name} output is non-finite but no node output "
                              "is (marking the outputs hides it); cannot localise")
        else:
            nodes = localised.nodes if localised.mode == "mark_all" else \
                comparison.localise(feed, self.atol, self.rtol, None).nodes
            offender, evidence = self._first_out_of_tolerance(nodes, failure)
            reason = "tolerance"
        targets = [offender] if offender in self.pinnable and offender not in self.pins else self._producers(offender)
        if not targets:
            raise SearchError(f"window {failure.input}: {reason} at {offender} and every producer of its inputs is "
                              f"already fp32: {self.precision} cannot be made acceptable by pinning")
        if len(self.pins) + len(targets) > self.max_pins:
            raise SearchError(f"more than {self.max_pins} nodes would be pinned (next: {', '.join(targets)} for "
                              f"{reason} at {offender} on {failure.input}); raise max_pins or the tolerance")
        new = []
        for name in targets:
            suffix = "" if name == offender else "_input"
            pin = Pin(name, self.nodes[name].op_type, self.stages.get(name), reason + suffix, failure.input,
                      engine.name, evidence if name == offender else {"consumer": offender} | evidence)
            self.pins[name] = pin
            new.append(pin)
        self.say(f"  pin {', '.join(p.node for p in new)} ({reason} at {offender}, window {failure.input}, "
                 f"{engine.name})")
        return new

    def _first_out_of_tolerance(self, stats: dict, failure: InputResult) -> tuple[str, dict]:
        """The first node (topological order) of the first divergent stage whose output leaves the tolerance."""
        stage = failure.first_divergent_stage
        order = list(self.nodes)
        failing = [n for n, (_, s, st) in stats.items() if not st.passed and (stage is None or s in (stage, None))]
        if not failing:
            raise SearchError(f"window {failure.input}: stage {stage} diverges but no node of it leaves the tolerance")
        first = min(failing, key=order.index)
        s = stats[first][2]
        evidence = {"stage_failing": stage, "max_abs_err": s.max_abs_err, "rel_err": s.rel_err,
                    "output_range": [s.ref_min, s.ref_max], "atol": self.atol, "rtol": self.rtol}
        return first, evidence

    def _producers(self, node: str) -> list[str]:
        """The nearest unpinned, pinnable producers upstream of ``node``'s inputs: through producers that
        are pinned (or fp32 anyway) the walk goes on to theirs, since an error that survives pinning a
        node and its producers was made further up. Constant and initializer inputs have none."""
        found, seen = set(), set()
        frontier = [node]
        while frontier:
            names = {self.producer.get(i) for n in frontier for i in self.nodes[n].input if i}
            names = {p for p in names if p is not None and p not in seen}
            seen |= names
            found |= {p for p in names if p in self.pinnable and p not in self.pins}
            frontier = sorted(p for p in names if p not in found)
            if found:
                break
        return sorted(found)

    # ------------------------------------------------------------------------------ the search
    def grow(self) -> None:
        while not (evaluation := self.evaluate(self.engine(set(self.pins)))).accepted:
            self.step(evaluation.failure)

    def prune(self) -> None:
        for name in list(reversed(self.pins)):
            if self.evaluate(self.engine(set(self.pins) - {name})).accepted:
                self.say(f"  unpin {name} (not needed)")
                del self.pins[name]

    def run(self) -> tuple[dict[str, Pin], Evaluation]:
        """Grow, prune; returns the pins and the evaluation of every window with them."""
        self.grow()
        self.prune()
        final = self.evaluate(self.engine(set(self.pins)), stop_at_failure=False)
        if not final.accepted:  # pruning accepted every removal it made, so this is a broken invariant
            raise SearchError(f"the pruned plan fails on {final.failure.input}: {final.failure.verdict}")
        return dict(self.pins), final
