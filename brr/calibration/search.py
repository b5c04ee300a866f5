"""The search for the fewest nodes an fp16/bf16 engine must keep in fp32.

The engine judged is the one ``brr-export`` serves on ONNX Runtime
(``brr.onnx.precision.low_precision_model``): weights stored in the precision, every
stored activation rounded through it by explicit Cast pairs, fp32 kernels. Overflow to inf,
underflow to zero and the rounding between nodes all appear; rounding inside one node's reduction
does not (nor bf16 arithmetic: no CPU provider computes it).

Acceptance, per window (EDF or synthetic windows, plus the adversarial suite): every probe stage (every
graph output) finite wherever fp32 is and within tolerance by the diff's probe-level comparator
(``brr.diff.run.compare_outputs``: eigenspaces for ``laplacian_pe``, kept edges for ``adjacency``),
and every float tensor of the engine finite wherever it is in fp32: a value that goes inf/NaN and is
sanitised downstream (a guard's clamp, x / inf = 0) fails the window as it fails ``brr-diff``.

Steps:

1. The fp32 pass (``brr.calibration.ranges``): one instrumented fp32 run per window. The windows and
   their fp32 outputs go to disk (``WindowStore``); the overflows and underflows the fp32 ranges make
   certain are pinned at once (``pin_from_ranges``), with that evidence, before any reduced-precision run.
2. The plan is evaluated on every window, the engine instrumented (probes and every tensor's range
   in one run). Each such evaluation is a *verified* plan: which windows accept it is known. The
   best so far is kept (most windows accepted, then fewest non-finite).
3. One kind of failure is fixed, then back to 2:

   - Non-finite: the diff's node level (``NodeLocaliser.scan``) names the first node whose output is
     non-finite in the engine and finite in fp32, and any independent origin after it. Each is
     pinned; one pinned already means the value reaching it was already ruined: its nearest unpinned
     producers are pinned instead (walking up through pinned ones). Each failing window with its own
     first non-finite tensor is scanned, so independent faults are fixed in one round.
   - Out of tolerance at stage S: rounding errors that are each small accumulate over many nodes,
     so no single "first bad node" explains them. On the windows failing at S and the graph cut
     down to what S's probe needs: pin every candidate (S's own unpinned nodes, or every unpinned
     node upstream of S's probe if that is not enough), then find the necessary ones in topological
     order: from the last one found, gallop (1, 2, 4, ... more candidates back in reduced precision)
     until the stage fails, then bisect; the candidate whose return makes it fail is necessary.
     Necessary nodes come in runs (the four nodes of a norm), and galloping finds the next of a run
     in one evaluation. Finally each kept node alone goes back to reduced precision once more: kept
     only if its stage then fails again, which is the evidence the plan records.

``budget_s``: when spent, the search stops between two evaluations and returns the best verified
plan (the fp32 pass and one evaluation of its plan always run). One line is logged per window of a
full evaluation, per evaluation of the tolerance search and per pin, with the elapsed time and peak RSS.

Memory: one window's feed, fp32 outputs and engine outputs at a time (the windows live on disk); the
sessions of at most three graphs (``SessionCache``: the instrumented fp32 graph and the two most
recent others; lean sessions hold their graph and weights, not a run's tensors); per window only its
label and the names of tensors non-finite in fp32 (none in a sound model); per tensor two range
records (``Fp32Ranges``); per evaluation its per-stage statistics. The peak is one run of the
largest graph (the instrumented engine) plus the sessions' weights, whatever the number of windows,
pins or evaluations.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Self

import onnx
from polygraphy.logger import G_LOGGER

from brr.calibration.ranges import FOUND_BY, Fp32Ranges, RangePin, range_pins, reads
from brr.calibration.sessions import SessionCache
from brr.calibration.windows import WindowStore
from brr.diff.compare import LaplacianSpectra, TensorStats, reference_spectrum
from brr.diff.engines import Engine
from brr.diff.inputs import WindowLoader
from brr.diff.localise import NodeLocaliser
from brr.diff.probes import compare_outputs
from brr.diff.results import PRECISION_LIMITS, Cause, InputResult, NonfiniteOrigin
from brr.diff.verdict import NonfiniteKind, Verdict
from brr.errors import CheckFailed
from brr.model import DetectorConfig
from brr.onnx.precision import low_precision_model
from brr.onnx.stages import node_stages
from brr.onnx.statistics import float_tensors, instrument, read_ranges
from brr.resources import peak_rss_mb

log = logging.getLogger(__name__)

REDUCED_PRECISIONS = ("fp16", "bf16")
# The failures a plan can fix: the others come from the input or the fp32 model.
FIXABLE_VERDICTS = (Verdict.NONFINITE_PRECISION, Verdict.DIVERGENCE)


class SearchError(CheckFailed):
    """The search cannot make the model acceptable (too many pins, or a failure no pin can reach)."""


class BudgetSpent(Exception):
    """The time budget ran out between two evaluations."""


@dataclass
class Pin:
    node: str
    op_type: str
    stage: str | None
    # "overflow", "overflow_consumer", "underflow", "underflow_producer" (fp32 pass); "nonfinite",
    # "nonfinite_input" (a producer of a ruined value), "nonfinite_consumer" (a reader of a result that
    # overflows when stored); "tolerance"
    reason: str
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
    # window -> the first tensor non-finite in the engine and finite in fp32 (evaluations of the whole graph)
    first_nonfinite: dict[str, str] = field(default_factory=dict)
    pins: frozenset[str] | None = None  # set on verified evaluations: the plan evaluated
    seconds: float = 0.0

    @property
    def failures(self) -> list[InputResult]:
        return [i for i in self.inputs if not i.verdict.accepted]

    @property
    def failure(self) -> InputResult | None:
        return next(iter(self.failures), None)

    @property
    def accepted(self) -> bool:
        return self.failure is None

    def rank(self) -> tuple[int, int]:
        """Better plans rank higher: more windows accepted, then fewer non-finite windows."""
        return (len(self.inputs) - len(self.failures),
                -sum(i.verdict.nonfinite for i in self.failures))

    def not_accepted(self) -> list[dict]:
        """Each window the plan fails, how, and at which stage."""
        return [{"window": i.input, "verdict": i.verdict, "stage": i.first_nonfinite_stage or i.first_divergent_stage,
                 "nonfinite_hidden": i.nonfinite_hidden} for i in self.failures]


class _StageTrial:
    """One stage's tolerance search: the graph cut down to the stage, the windows failing there, and the
    pins it starts from; each trial evaluates that graph with some more nodes in fp32."""

    def __init__(self, search: PlanSearch, stage: str, labels: list[str]):
        self.search, self.stage, self.labels = search, stage, labels
        self.cut = search.cut_to(stage)
        self.in_cut = {n.name for n in self.cut.graph.node}
        self.pinned = set(search.pins)
        self.windows = f"{stage} on {len(labels)} window(s)"

    def evaluate(self, extra: list[str]) -> Evaluation:
        return self.search.evaluate(self.search.engine(self.pinned | set(extra), self.cut), labels=self.labels)

    def accepted(self, extra: list[str], what: str) -> bool:
        """Whether the stage is within tolerance with ``extra`` in fp32 too; one line logged, saying ``what``."""
        evaluation = self.evaluate(extra)
        self.search._log(f"tolerance search, {self.windows}, {what}: "
                         f"{'within' if evaluation.accepted else 'beyond'} tolerance")
        return evaluation.accepted


class PlanSearch:
    """fp32 ONNX graph (all probes as outputs) + windows -> the pinned node set of an accepted plan.

    ``windows``: a ``WindowLoader`` or (label, feed) pairs, read once, by the fp32 pass in the constructor.
    """

    def __init__(self, fp32_model: onnx.ModelProto, precision: str,
                 windows: WindowLoader | Iterable[tuple[str, dict]], atol: float, rtol: float,
                 config: DetectorConfig | None = None, pinnable: set[str] | None = None, max_pins: int = 64,
                 budget_s: float | None = None):
        if precision not in REDUCED_PRECISIONS:
            raise ValueError(f"precision must be one of {REDUCED_PRECISIONS}, got {precision!r}")
        self.fp32 = fp32_model
        self.precision, self.atol, self.rtol = precision, atol, rtol
        self.config = config
        self.nodes = {n.name: n for n in fp32_model.graph.node}
        self.stages = node_stages(fp32_model)
        self.producer = {out: n.name for n in fp32_model.graph.node for out in n.output}
        self.pinnable = {name for name, n in self.nodes.items()
                         if n.op_type != "Constant" and (pinnable is None or name in pinnable)}
        self.max_pins, self.budget_s = max_pins, budget_s
        self.started = time.monotonic()
        self.pins: dict[str, Pin] = {}
        self.evaluations = 0
        self.best: Evaluation | None = None
        self.stopped: str | None = None  # why the search ended: "accepted", "budget"
        self.sessions = SessionCache()
        self.store = WindowStore()
        try:
            self.ranges = self._fp32_pass(windows.labelled() if isinstance(windows, WindowLoader) else windows)
        except BaseException:
            self.close()
            raise
        self.order = list(self.store.labels)  # windows that failed last are evaluated first
        self.ranges_pinned = False

    def close(self) -> None:
        """Remove the windows from disk and give the sessions back."""
        self.sessions.close()
        self.store.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_) -> None:
        self.close()

    @property
    def windows(self) -> list[str]:
        return list(self.store.labels)

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def _log(self, message: str) -> None:
        log.info(f"{message} [{self.elapsed:.0f} s, peak RSS {peak_rss_mb():.0f} MB]")

    # ------------------------------------------------------------------------------ the fp32 pass
    def _fp32_pass(self, windows: Iterable[tuple[str, dict]]) -> Fp32Ranges:
        """One instrumented fp32 run per window: the windows and their outputs to disk, the ranges kept."""
        names = float_tensors(self.fp32)
        outputs = [o.name for o in self.fp32.graph.output]
        ranges = Fp32Ranges(PRECISION_LIMITS[self.precision][1])
        with G_LOGGER.verbosity(G_LOGGER.ERROR), self.sessions.runner(
                instrument(self.fp32, names), "fp32-statistics", keep=True) as runner:
            for label, feed in windows:
                values = runner.infer(feed)
                tensor_ranges = read_ranges(values, names)
                self.store.add(label, feed, {o: values[o] for o in outputs},
                               {n for n, r in tensor_ranges.items() if not r.finite})
                ranges.add(label, tensor_ranges)
                del values
                self._log(f"fp32 pass: window {len(self.store)} {label}")
        if not len(self.store):
            raise ValueError("no calibration windows")
        return ranges

    def pin_from_ranges(self) -> list[Pin]:
        """Pin what the fp32 ranges make certain (``brr.calibration.ranges``); no reduced-precision run."""
        self.ranges_pinned = True
        found: list[RangePin] = range_pins(self.fp32, self.ranges, self.precision, self.pinnable)
        new = [Pin(p.node, p.op_type, self.stages.get(p.node), p.reason, p.window, FOUND_BY, p.evidence)
               for p in found if p.node not in self.pins]
        self._check_pin_limit(len(new), "the fp32 ranges")
        self.pins.update((pin.node, pin) for pin in new)
        for pin in new:
            self._log(f"pin {pin.node} ({pin.op_type}, {pin.stage}): {pin.evidence['explanation']}")
        return new

    # ------------------------------------------------------------------------------ engines
    def reduced_model(self, pinned: set[str] | list[str], fp32: onnx.ModelProto | None = None) -> onnx.ModelProto:
        """The exporter's conversion of ``fp32`` (default: the whole graph) with ``pinned`` kept fp32."""
        fp32 = self.fp32 if fp32 is None else fp32
        return low_precision_model(onnx.ModelProto.FromString(fp32.SerializeToString()), pinned, self.precision)

    def engine(self, pinned: set[str] | list[str], fp32: onnx.ModelProto | None = None) -> Engine:
        """The engine that judges a pinned set, on ``fp32`` (default: the whole graph; the tolerance
        search passes graphs cut down to one probe). Its sessions come from the search's cache."""
        fp32 = self.fp32 if fp32 is None else fp32
        model = self.reduced_model(pinned, fp32)
        name = f"onnxruntime-{self.precision}"
        return Engine(name, self.sessions.runner(model, name), self.precision, model, fp32, self.sessions.runner)

    def upstream(self, tensor: str) -> set[str]:
        """Names of the nodes ``tensor`` is computed from (Loop/If bodies' outer-scope reads included)."""
        needed: set[str] = set()
        stack = [tensor]
        while stack:
            node = self.producer.get(stack.pop())
            if node is not None and node not in needed:
                needed.add(node)
                stack.extend(reads(self.nodes[node]))
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
        read = {name for n in kept for name in reads(n)}
        for field_name, keep in (("value_info", produced), ("initializer", read)):
            entries = getattr(cut.graph, field_name)
            still = [e for e in entries if e.name in keep]
            del entries[:]
            entries.extend(still)
        return cut

    def _spectrum(self, ref_out: dict) -> LaplacianSpectra | None:
        cfg = self.config
        if cfg is None or "adjacency" not in ref_out or not cfg.use_dynamic_pe:
            return None
        return reference_spectrum(ref_out["adjacency"], cfg.semi_dynamic_interval, cfg.degree_clamp,
                                  cfg.laplacian_shift)

    # ------------------------------------------------------------------------------ evaluation
    def _check_time(self) -> None:
        if self.budget_s is not None and self.best is not None and self.elapsed > self.budget_s:
            raise BudgetSpent

    def evaluate(self, engine: Engine, stop_at_failure: bool = True, labels: list[str] | None = None,
                 progress: str | None = None) -> Evaluation:
        """Judge ``engine`` on the windows (or those ``labels``), the last to fail first. An engine of the
        whole graph is run instrumented, so non-finite values every probe hides fail the window too.
        ``progress``: say one line per window, starting with it."""
        self._check_time()
        self.evaluations += 1
        start = time.monotonic()
        result = Evaluation(engine.name)
        localiser = NodeLocaliser(engine, self.sessions.runner) if (
            engine.localisable and engine.fp32_model is self.fp32) else None
        names = [t.name for t in localiser.tensors] if localiser else []
        runner = engine.runner_for(instrument(engine.onnx_model, names), f"{engine.name}-statistics") \
            if localiser else engine.runner
        chosen = [w for w in self.order if labels is None or w in labels]
        with G_LOGGER.verbosity(G_LOGGER.ERROR), runner:
            for count, label in enumerate(chosen, 1):
                feed, reference = self.store.feed(label), self.store.reference(label)
                values = runner.infer(feed)
                outcome = compare_outputs(label, feed, reference, values, self._spectrum(reference), self.atol,
                                          self.rtol, self.config.edge_top_k if self.config else None)
                if localiser is not None:
                    self._judge_tensors(localiser, read_ranges(values, names), outcome, result)
                del values, feed, reference
                result.inputs.append(outcome)
                for name, stage in outcome.stages.items():
                    result.stages.setdefault(name, TensorStats()).merge(stage.stats)
                if progress:
                    where = outcome.first_nonfinite_stage or outcome.first_divergent_stage
                    self._log(f"{progress}: window {count}/{len(chosen)} {label}: {outcome.verdict}"
                              + (f" at {where}" if where and not outcome.verdict.accepted else "")
                              + (" (hidden inside the engine)" if outcome.nonfinite_hidden else ""))
                if not outcome.verdict.accepted:
                    self.order.remove(label)
                    self.order.insert(0, label)
                    if stop_at_failure:
                        break
        result.seconds = time.monotonic() - start
        return result

    def _judge_tensors(self, localiser: NodeLocaliser, ranges: dict, outcome: InputResult,
                       result: Evaluation) -> None:
        """A tensor non-finite in the engine where fp32 is finite fails the window, wherever it is consumed."""
        fp32_nonfinite = self.store.fp32_nonfinite(outcome.input)
        bad = [t for t in localiser.tensors if not ranges[t.name].finite and t.name not in fp32_nonfinite]
        if not bad:
            return
        result.first_nonfinite[outcome.input] = bad[0].name
        if outcome.verdict.accepted or outcome.verdict is Verdict.DIVERGENCE:
            outcome.verdict = Verdict.NONFINITE_PRECISION
            outcome.nonfinite_hidden = outcome.first_nonfinite_stage is None
            outcome.first_nonfinite_stage = outcome.first_nonfinite_stage or bad[0].stage

    # ------------------------------------------------------------------------------ one failure
    def fix(self, evaluation: Evaluation) -> list[Pin]:
        """Pin what makes the failures of ``evaluation`` fail (see the module docstring)."""
        failures = evaluation.failures
        for failure in failures:
            if failure.verdict not in FIXABLE_VERDICTS:
                raise SearchError(f"window {failure.input}: verdict {failure.verdict}: not a precision problem a "
                                  "plan can fix (non-finite input or already non-finite in fp32)")
        stage_order = list(evaluation.inputs[0].stages)

        def position(stage: str | None) -> int:
            return stage_order.index(stage) if stage in stage_order else len(stage_order)

        nonfinite = sorted((i for i in failures if i.verdict is Verdict.NONFINITE_PRECISION),
                           key=lambda i: position(i.first_nonfinite_stage))
        if nonfinite:
            return self._fix_nonfinite(nonfinite, evaluation)
        failure = min(failures, key=lambda i: position(i.first_divergent_stage))
        stage = failure.first_divergent_stage
        return self._settle(stage, [i.input for i in failures if i.first_divergent_stage == stage])

    def _fix_nonfinite(self, failures: list[InputResult], evaluation: Evaluation) -> list[Pin]:
        """Scan each failing window whose first non-finite tensor is new this round; pin every origin."""
        engine = self.engine(set(self.pins))
        localiser = NodeLocaliser(engine, self.sessions.runner)
        new: list[Pin] = []
        scanned_firsts: set[str | None] = set()
        try:
            for failure in failures:
                first = evaluation.first_nonfinite.get(failure.input)
                if first is not None and first in scanned_firsts:
                    continue
                self._check_time()
                localised = localiser.scan(self.store.feed(failure.input))
                origins = [o for o in (localised.first_nonfinite, *localised.more_nonfinite)
                           if o is not None and o.kind is NonfiniteKind.PRECISION]
                if not origins:
                    raise SearchError(f"window {failure.input}: {engine.name} output is non-finite but no node output "
                                      "is: cannot localise")
                for origin in origins:
                    if origin.node not in {p.node for p in new}:
                        new += self._pin_nonfinite(origin, failure.input, engine.name, {p.node for p in new})
                scanned_firsts.add(first)
        finally:
            localiser.close()
        return new

    def _pin_nonfinite(self, origin: NonfiniteOrigin, window: str, engine: str, this_round: set[str]) -> list[Pin]:
        offender = origin.node
        # A finite result that overflows when stored for the nodes reading it in the precision: they must read
        # it in fp32 too (as the fp32 ranges pin an overflow's consumers with it).
        before = origin.output.engine_before_storing
        readers = [n for n, node in self.nodes.items() if origin.tensor in node.input and n in self.pinnable
                   and n not in self.pins and n not in this_round] if (
            origin.cause is Cause.OVERFLOW_WHEN_STORED and before is not None and not before.nonfinite) else []
        targets = [offender, *readers] if offender in self.pinnable and offender not in self.pins else \
            readers or [p for p in self._producers(offender) if p not in this_round]
        if not targets:
            if this_round:
                return []  # its producers were pinned this round: the next evaluation tells
            raise SearchError(f"window {window}: non-finite at {offender} and every producer of its inputs is "
                              f"already fp32: {self.precision} cannot be made acceptable by pinning")
        self._check_pin_limit(len(targets), f"non-finite at {offender} on {window}")
        evidence = origin.to_dict()
        reasons = {name: ("nonfinite_consumer", {"producer": offender}) if name in readers else
                   ("nonfinite_input", {"consumer": offender}) for name in targets} | {offender: ("nonfinite", {})}
        new = [Pin(name, self.nodes[name].op_type, self.stages.get(name), reasons[name][0], window, engine,
                   reasons[name][1] | evidence) for name in targets]
        self.pins.update((pin.node, pin) for pin in new)
        self._log(f"pin {', '.join(targets)}: non-finite at {offender} ({origin.op_type}, {origin.stage}) "
                  f"on {window}: {origin.explanation}")
        return new

    def _settle(self, stage: str, labels: list[str]) -> list[Pin]:
        """Pin the fewest nodes that bring ``stage`` back within tolerance on ``labels`` (docstring)."""
        trial = _StageTrial(self, stage, labels)
        kept = self._necessary(trial, self._sufficient(trial))
        new = self._tolerance_pins(trial, kept)
        if not new:
            raise SearchError(f"{stage} fails on {', '.join(labels)} on the whole graph but not on the graph cut "
                              "down to it: the search cannot make progress")
        self.pins.update((pin.node, pin) for pin in reversed(new))
        self._log(f"pin {', '.join(p.node for p in reversed(new))}: {stage} out of tolerance")
        return new

    def _sufficient(self, trial: _StageTrial) -> list[str]:
        """Candidates that, all in fp32, bring the stage back: its own unpinned nodes, else every unpinned
        node it is computed from (in topological order)."""
        upstream = [n for n in self.nodes if n in trial.in_cut and n in self.pinnable and n not in trial.pinned]
        own = [n for n in upstream if self.stages.get(n) == trial.stage]
        for candidates, what in ((own, f"its {len(own)} own nodes in fp32"),
                                 (upstream, f"all {len(upstream)} nodes it needs in fp32")):
            if candidates and trial.accepted(candidates, what):
                return candidates
        raise SearchError(f"{trial.stage} stays out of tolerance on {', '.join(trial.labels)} even with every "
                          "node it is computed from in fp32: raise the tolerance")

    def _necessary(self, trial: _StageTrial, candidates: list[str]) -> list[str]:
        """The candidates that must stay fp32, in topological order: from the last one found, the next is the
        one whose return to reduced precision makes the stage fail."""
        kept: list[str] = []
        rest = candidates
        while rest and not trial.accepted(kept, f"{len(kept)} kept in fp32, {len(rest)} left in {self.precision}"):
            good, bad = self._gallop(trial, kept, rest)
            good = self._bisect(trial, kept, rest, good, bad)
            kept.append(rest[good])
            rest = rest[good + 1:]
            self._check_pin_limit(len(kept), f"{trial.stage} out of tolerance on {', '.join(trial.labels)}")
        return kept

    def _gallop(self, trial: _StageTrial, kept: list[str], rest: list[str]) -> tuple[int, int]:
        """(good, bad) around the next necessary candidate, 1, 2, 4, ... more of ``rest`` back in reduced
        precision at a time. f(j): accepted with rest[:j] back in reduced precision; f(0) holds (the
        candidates were accepted in fp32), f(len(rest)) does not (``kept`` alone is not accepted)."""
        good, bad, step = 0, len(rest), 1
        while good + step < bad:
            what = f"the next {good + step} of {len(rest)} back in {self.precision}"
            if trial.accepted(kept + rest[good + step:], what):
                good, step = good + step, step * 2
            else:
                bad = good + step
        return good, bad

    def _bisect(self, trial: _StageTrial, kept: list[str], rest: list[str], good: int, bad: int) -> int:
        """The last j with f(j) (see ``_gallop``), given f(good) and not f(bad): rest[j] is necessary."""
        while bad - good > 1:
            mid = (good + bad) // 2
            if trial.accepted(kept + rest[mid:], f"the next {mid} of {len(rest)} back in {self.precision}"):
                good = mid
            else:
                bad = mid
        return good

    def _tolerance_pins(self, trial: _StageTrial, kept: list[str]) -> list[Pin]:
        """Each kept node alone back in reduced precision once more: a pin, with the failure that causes as
        its evidence, where the stage fails again; dropped where it does not."""
        new = []
        for name in reversed(kept):  # ``kept`` loses the unneeded ones as they are found
            others = [k for k in kept if k != name]
            without = trial.evaluate(others)
            if without.accepted:
                kept.remove(name)
                self._log(f"tolerance search, {trial.windows}: {name} is not needed once the others are fp32")
                continue
            failing = without.failure
            failed_stage = failing.first_divergent_stage or failing.first_nonfinite_stage
            stats = failing.stages[failed_stage].stats
            new.append(Pin(name, self.nodes[name].op_type, self.stages.get(name), "tolerance", failing.input,
                           without.engine, {
                               "stage_failing_without_it": failed_stage,
                               "max_abs_err_without_it": stats.max_abs_err, "rel_err_without_it": stats.rel_err,
                               "atol": self.atol, "rtol": self.rtol,
                               "explanation": (f"unpinned alone, {failed_stage} leaves the tolerance on "
                                               f"{failing.input} (max abs err {stats.max_abs_err:.3g})"),
                           }))
        return new

    def _check_pin_limit(self, adding: int, why: str) -> None:
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
        """Pin until every window is accepted, or until the budget is spent; returns the pins of the best
        verified plan and its evaluation on every window (``stopped`` says which way it ended)."""
        if not self.ranges_pinned:
            self.pin_from_ranges()
        try:
            while True:
                number = self.evaluations + 1
                evaluation = self.evaluate(self.engine(set(self.pins)), stop_at_failure=False,
                                           progress=f"evaluation {number} ({len(self.pins)} pinned)")
                evaluation.pins = frozenset(self.pins)
                if self.best is None or evaluation.rank() >= self.best.rank():
                    self.best = evaluation
                accepted = len(evaluation.inputs) - len(evaluation.failures)
                self._log(f"evaluation {number}: {len(self.pins)} pinned, accepted on {accepted} of "
                          f"{len(evaluation.inputs)} windows in {evaluation.seconds:.0f} s")
                if evaluation.accepted:
                    self.stopped = "accepted"
                    break
                self.fix(evaluation)
        except BudgetSpent:
            self.stopped = "budget"
            self._log(f"budget of {self.budget_s / 60:g} min spent: keeping the best verified plan "
                      f"({len(self.best.pins)} pinned, accepted on "
                      f"{len(self.best.inputs) - len(self.best.failures)} of {len(self.best.inputs)} windows)")
        return self.best_pins(), self.best

    def best_pins(self) -> dict[str, Pin]:
        """The pins of the best verified plan (empty before any)."""
        return {} if self.best is None else {name: pin for name, pin in self.pins.items() if name in self.best.pins}
