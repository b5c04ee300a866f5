"""The search for the fewest nodes an fp16/bf16 engine must keep in fp32.

Acceptance, per window of the calibration set (EDF windows, plus the adversarial suite): every probe
stage (every graph output) of the reduced-precision model is finite wherever the fp32 model is, and
within tolerance by the diff's own probe-level comparator (``brr.diff.run.compare_outputs``:
eigenspaces for ``laplacian_pe``, kept edges for ``adjacency``).

Search, one failure at a time (windows failing non-finite first, then by their first divergent stage
in pipeline order), until every window is accepted:

- Non-finite: the diff's node-level comparison (``brr.diff.localise.NodeComparison``) names the first
  node whose output is non-finite in reduced precision (checked even when the outputs stay finite:
  x / inf = 0). Pin it; if it is pinned already (or fp32 anyway), the value reaching it was already
  ruined: pin its nearest unpinned producers instead (walking up through pinned ones).
- Out of tolerance at stage S: rounding errors that are each small accumulate over many nodes (the
  SSD's chunk states), so no single "first bad node" explains them. Instead, on the windows failing at
  S and on the graph cut down to what S's probe needs: pin every candidate (S's own unpinned nodes,
  or every unpinned node upstream of S's probe if that is not enough), then bisect over the
  topological order for the necessary ones: the largest prefix of the candidates that can go back to
  reduced precision ends just before a necessary node; keep it, repeat on the rest. Each kept node
  costs ~log2(candidates) evaluations. Finally each kept node is unpinned alone once more: kept only
  if its stage then fails again, which is the evidence the plan records.

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
from polygraphy.logger import G_LOGGER

from brr.backends.onnxrt.runner import lean_onnxruntime_runner, onnxruntime_runner
from brr.diff.compare import TensorStats, reference_spectrum
from brr.diff.engines import Engine, onnxruntime_engine
from brr.diff.localise import NodeLocaliser
from brr.diff.results import InputResult
from brr.diff.probes import compare_outputs
from brr.errors import CheckFailed
from brr.model import DetectorConfig
from brr.onnx.precision import low_precision_model
from brr.onnx.stages import node_stages

REDUCED_PRECISIONS = ("fp16", "bf16")
ACCEPTED_VERDICTS = ("clean", "basis_ambiguous")


class SearchError(CheckFailed):
    """The search cannot make the model acceptable (budget spent, or a failure no pin can reach)."""


@dataclass
class Pin:
    node: str
    op_type: str
    stage: str | None
    reason: str  # "nonfinite", "nonfinite_input" (a producer of a ruined value), "tolerance"
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
                 pinnable: set[str] | None = None, max_pins: int = 64, say: Callable[[str], None] = lambda _: None):
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
        self.pinnable = {name for name, n in self.nodes.items()
                         if n.op_type != "Constant"
                         and (pinnable is None or name in pinnable)}
        self.max_pins, self.say = max_pins, say
        self.pins: dict[str, Pin] = {}
        self.order = list(self.windows)  # windows that failed last are evaluated first
        self.reference = self._reference_outputs()
        self.evaluations = 0

    # ------------------------------------------------------------------------------ engines
    def reduced_model(self, pinned: set[str] | list[str]) -> onnx.ModelProto:
        """The exporter's conversion of the fp32 graph with ``pinned`` kept fp32."""
        return low_precision_model(onnx.ModelProto.FromString(self.fp32.SerializeToString()), pinned, self.precision)

    def engine(self, pinned: set[str] | list[str], fp32: onnx.ModelProto | None = None) -> Engine:
        """The engine that judges a pinned set (see the module docstring), on ``fp32`` (default: the
        whole graph; the search passes graphs cut down to one probe)."""
        fp32 = self.fp32 if fp32 is None else fp32
        model = low_precision_model(onnx.ModelProto.FromString(fp32.SerializeToString()), pinned, self.precision)
        return onnxruntime_engine(model, fp32, name=f"onnxruntime-{self.precision}", precision=self.precision)

    def upstream(self, tensor: str) -> set[str]:
        """Names of the nodes ``tensor`` is computed from (Loop/If bodies' outer-scope reads included)."""
        needed: set[str] = set()
        stack = [tensor]
        while stack:
            node = self.producer.get(stack.pop())
            if node is not None and node not in needed:
                needed.add(node)
                stack.extend(_reads(self.nodes[node]))
        return needed

    def cut_to(self, probe: str) -> onnx.ModelProto:
        """The fp32 graph reduced to what ``probe`` needs, with the probes computed on the way as outputs."""
        needed = self.upstream(probe)
        cut = onnx.ModelProto.FromString(self.fp32.SerializeToString())
        kept = [n for n in cut.graph.node if n.name in needed]
        del cut.graph.node[:]
        cut.graph.node.extend(kept)
        outputs = [o for o in cut.graph.output if self.producer.get(o.name) in needed]
        del cut.graph.output[:]
        cut.graph.output.extend(outputs)
        produced = {out for n in kept for out in n.output}
        read = {name for n in kept for name in _reads(n)}
        for field_name, keep in (("value_info", produced), ("initializer", read)):
            entries = getattr(cut.graph, field_name)
            still = [e for e in entries if e.name in keep]
            del entries[:]
            entries.extend(still)
        return cut

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
    def evaluate(self, engine: Engine, stop_at_failure: bool = True, labels: list[str] | None = None) -> Evaluation:
        """Judge ``engine`` on the windows (or those ``labels``), the last to fail first."""
        self.evaluations += 1
        result = Evaluation(engine.name)
        with G_LOGGER.verbosity(G_LOGGER.ERROR), engine.runner as runner:
            for label in [w for w in self.order if labels is None or w in labels]:
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

    # ------------------------------------------------------------------------------ one failure
    def fix(self, evaluation: Evaluation) -> list[Pin]:
        """Pin what makes the first failure of ``evaluation`` fail (see the module docstring)."""
        failures = [i for i in evaluation.inputs if i.verdict not in ACCEPTED_VERDICTS]
        for failure in failures:
            if failure.verdict not in ("nonfinite_precision", "divergence"):
                raise SearchError(f"window {failure.input}: verdict {failure.verdict}: not a precision problem a "
                                  "plan can fix (non-finite input or already non-finite in fp32)")
        stage_order = list(evaluation.inputs[0].stages)
        failure = min(failures, key=lambda i: (i.verdict != "nonfinite_precision",
                                               stage_order.index(i.first_nonfinite_stage or i.first_divergent_stage)))
        engine = self.engine(set(self.pins))
        # A non-finite node output is the first suspect even when the outputs stay finite (x / inf = 0).
        localised = NodeLocaliser(engine, lean_onnxruntime_runner).scan(self.windows[failure.input])
        if localised.first_nonfinite is not None:
            return self._pin_nonfinite(localised.first_nonfinite, failure.input, engine.name)
        if failure.verdict == "nonfinite_precision":
            raise SearchError(f"window {failure.input}: {engine.name} output is non-finite but no node output "
                              "is (marking the outputs hides it); cannot localise")
        stage = failure.first_divergent_stage
        return self._settle(stage, [i.input for i in failures if i.first_divergent_stage == stage])

    def _pin_nonfinite(self, evidence: dict, window: str, engine: str) -> list[Pin]:
        offender = evidence["node"]
        targets = [offender] if offender in self.pinnable and offender not in self.pins else self._producers(offender)
        if not targets:
            raise SearchError(f"window {window}: non-finite at {offender} and every producer of its inputs is "
                              f"already fp32: {self.precision} cannot be made acceptable by pinning")
        self._check_budget(len(targets), f"non-finite at {offender} on {window}")
        new = [Pin(name, self.nodes[name].op_type, self.stages.get(name),
                   "nonfinite" if name == offender else "nonfinite_input", window, engine,
                   evidence if name == offender else {"consumer": offender} | evidence) for name in targets]
        self.pins.update((pin.node, pin) for pin in new)
        self.say(f"  pin {', '.join(targets)} (non-finite at {offender}, window {window})")
        return new

    def _settle(self, stage: str, labels: list[str]) -> list[Pin]:
        """Pin the fewest nodes that bring ``stage`` back within tolerance on ``labels`` (docstring)."""
        cut = self.cut_to(stage)
        in_cut = {n.name for n in cut.graph.node}
        pinned = set(self.pins)

        def accepted(extra) -> bool:
            return self.evaluate(self.engine(pinned | set(extra), cut), labels=labels).accepted

        upstream = [n for n in self.nodes if n in in_cut and n in self.pinnable and n not in pinned]
        own = [n for n in upstream if self.stages.get(n) == stage]
        candidates = next((c for c in (own, upstream) if c and accepted(c)), None)
        if candidates is None:
            raise SearchError(f"{stage} stays out of tolerance on {', '.join(labels)} even with every node it is "
                              f"computed from in fp32: raise the tolerance")
        self.say(f"  {stage} out of tolerance on {len(labels)} window(s): bisecting {len(candidates)} candidates")
        kept: list[str] = []
        rest = candidates
        while rest and not accepted(kept):
            lo, hi = 0, len(rest) - 1  # with rest[lo:] pinned it is accepted; with none of rest, not
            while lo < hi:
                mid = (lo + hi + 1) // 2
                lo, hi = (mid, hi) if accepted(kept + rest[mid:]) else (lo, mid - 1)
            kept.append(rest[lo])
            rest = rest[lo + 1:]
            self._check_budget(len(kept), f"{stage} out of tolerance on {', '.join(labels)}")
        new = []
        for name in reversed(kept):  # each kept node alone back in reduced precision: the evidence
            others = [k for k in kept if k != name]
            without = self.evaluate(self.engine(pinned | set(others), cut), labels=labels)
            if without.accepted:
                kept.remove(name)
                continue
            failing = without.failure
            stats = failing.stages[failing.first_divergent_stage].stats
            new.append(Pin(name, self.nodes[name].op_type, self.stages.get(name), "tolerance", failing.input,
                           without.engine, {
                               "stage_failing_without_it": failing.first_divergent_stage,
                               "max_abs_err_without_it": stats.max_abs_err, "rel_err_without_it": stats.rel_err,
                               "atol": self.atol, "rtol": self.rtol,
                               "explanation": (f"unpinned alone, {failing.first_divergent_stage} leaves the "
                                               f"tolerance on {failing.input} (max abs err {stats.max_abs_err:.3g})"),
                           }))
        if not new:
            raise SearchError(f"{stage} fails on {', '.join(labels)} on the whole graph but not on the graph cut "
                              "down to it: the search cannot make progress")
        self.pins.update((pin.node, pin) for pin in reversed(new))
        self.say(f"  pin {', '.join(p.node for p in reversed(new))} ({stage} out of tolerance)")
        return new

    def _check_budget(self, adding: int, why: str) -> None:
        if len(self.pins) + adding > self.max_pins:
            raise SearchError(f"more than {self.max_pins} nodes would be pinned ({why}); raise max_pins or the "
                              "tolerance")

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
    def run(self) -> tuple[dict[str, Pin], Evaluation]:
        """Pin until every window is accepted; returns the pins and the evaluation of every window."""
        while not (evaluation := self.evaluate(self.engine(set(self.pins)), stop_at_failure=False)).accepted:
            self.fix(evaluation)
        return dict(self.pins), evaluation


def _reads(node: onnx.NodeProto) -> list[str]:
    """Every tensor name ``node`` reads, including those its subgraphs read from the enclosing scope
    (names inside a subgraph cannot shadow outer ones, so anything produced outside counts)."""
    names = [i for i in node.input if i]
    for attribute in node.attribute:
        for graph in [attribute.g] if attribute.HasField("g") else list(attribute.graphs):
            for inner in graph.node:
                names.extend(_reads(inner))
    return names
