"""Node level on OpenVINO engines: the fp32 graph's tensors that the OpenVINO model keeps, read as its outputs.

An OpenVINO engine is the fp32 ONNX converted (after brr's lowering) and compiled with a precision hint, so
its graph for node level is the fp32 graph itself, and its tensors are those of the fp32 graph that OpenVINO
keeps under their ONNX names (``brr.backends.openvino.probing``): the compared tensors are those, and the
rest are listed as unobserved. The non-finite origin and the bisection are ``NodeLocaliser``'s, on them.

Every run of the engine with tensors marked as outputs may compute otherwise than the engine under test:
OpenVINO fuses around a marked tensor no more, and under a bf16 hint chooses where to keep f32 anew. So each
run's logits are held to the engine's own within ``REPRODUCTION_FRACTION`` of the diff's tolerance, with the
same elements finite. Where a run falls outside, what it read is another computation: node level keeps no
finding on that input and says so, and the input is judged at its probes, as without node level.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx

from brr.backends.openvino.probing import OpenVINOTensors
from brr.diff.engines import Engine
from brr.diff.localise import NodeLocaliser, Tensor
from brr.diff.results import Localisation
from brr.diff.verdict import NonfiniteKind
from brr.model.contract import OUTPUT_NAME
from brr.onnx.statistics import TensorRange, read_ranges

# A marked run's logits may differ from the engine's own by this fraction of the diff's atol + rtol * |logit|.
REPRODUCTION_FRACTION = 0.1


def node_localiser(engine: Engine, fp32_runner_for: Callable[[onnx.ModelProto, str], object], atol: float,
                   rtol: float) -> NodeLocaliser:
    """The localiser of ``engine``: ``OpenVINOLocaliser`` where its tensors are read as OpenVINO outputs."""
    if isinstance(engine.tensor_statistics, OpenVINOTensors):
        return OpenVINOLocaliser(engine, fp32_runner_for, atol, rtol)
    return NodeLocaliser(engine, fp32_runner_for)


class OpenVINOLocaliser(NodeLocaliser):
    """``NodeLocaliser`` over the tensors an OpenVINO engine keeps, with the reproduction held to a fraction of
    the diff's tolerance (``atol``, ``rtol``), and findings dropped on an input where a run falls outside it."""

    # A scan compiles the model once per batch of marked tensors (tens of seconds a window): it runs where the
    # probes show a failure, not on every passing input of a verification.
    scans_passing_inputs = False

    def __init__(self, engine: Engine, fp32_runner_for: Callable[[onnx.ModelProto, str], object], atol: float,
                 rtol: float):
        self.openvino: OpenVINOTensors = engine.tensor_statistics
        self.atol, self.rtol = atol, rtol
        self.unkept: list[str] = []  # compared tensors of the fp32 graph with no OpenVINO tensor of their own
        super().__init__(engine, fp32_runner_for)

    def _align(self) -> list[Tensor]:
        compared = super()._align()
        self.unkept = [t.name for t in compared if t.name not in self.openvino.kept]
        return [t for t in compared if t.name in self.openvino.kept]

    def _statistics(self, feed: dict, result: Localisation, engine_logits: np.ndarray | None
                    ) -> tuple[dict[str, tuple[TensorRange, TensorRange]], dict[str, TensorRange]]:
        """Ranges as ``NodeLocaliser``'s, every marked run's logits checked; none where one did not reproduce."""
        names = [t.name for t in self.tensors]
        ref_ranges = read_ranges(self._statistics_run(feed, fp32=True), names)
        self._sizes = {n: r.size for n, r in ref_ranges.items()}
        observed = self.openvino(names, feed)
        result.runs += 1 + len(observed.run_logits)
        result.observed(observed.method)
        result.unobserved = list(self.unkept)
        for logits in observed.run_logits:
            self._check_reproduced(result, {OUTPUT_NAME: logits}, engine_logits)
        if result.reproduced is False:
            return {}, ref_ranges
        return {n: (ref_ranges[n], observed.ranges[n]) for n in names}, ref_ranges

    def _origins(self, ranges: dict[str, tuple[TensorRange, TensorRange]], kind: NonfiniteKind) -> list[Tensor]:
        """``NodeLocaliser``'s, less those whose inputs are made, through tensors OpenVINO does not keep, from a
        non-finite one: their values did not go non-finite there."""
        bad = self._nonfinite(ranges, kind)
        return [t for t in super()._origins(ranges, kind) if bad.isdisjoint(self._read_from(t, ranges))]

    def _read_from(self, tensor: Tensor, ranges: dict) -> set[str]:
        """The read tensors (in ``ranges``) that ``tensor``'s node computes from, through unread ones."""
        found, stack, visited = set(), list(self.nodes[tensor.position].input), set()
        while stack:
            name = stack.pop()
            if name in visited:
                continue
            visited.add(name)
            if name in ranges:
                found.add(name)
            elif name in self.producers:
                stack.extend(self.producers[name].input)
        return found

    def _check_reproduced(self, result: Localisation, outputs: dict, engine_logits: np.ndarray | None) -> None:
        if engine_logits is None or OUTPUT_NAME not in outputs:
            return
        ours, theirs = np.asarray(outputs[OUTPUT_NAME], np.float64), np.asarray(engine_logits, np.float64)
        same_nonfinite = bool((np.isfinite(ours) == np.isfinite(theirs)).all())
        both = np.isfinite(ours) & np.isfinite(theirs)
        difference = np.abs(ours[both] - theirs[both])
        allowed = REPRODUCTION_FRACTION * (self.atol + self.rtol * np.abs(theirs[both]))
        ok = same_nonfinite and bool((difference <= allowed).all())
        error = float(difference.max()) if difference.size else 0.0
        result.reproduced = ok if result.reproduced is None else result.reproduced and ok
        result.reproduction_error = max(result.reproduction_error, error if same_nonfinite else float("inf"))

    def scan(self, feed: dict, engine_logits: np.ndarray | None = None) -> Localisation:
        return self._unless_unreproduced(super().scan(feed, engine_logits))

    def first_divergent(self, feed: dict, stage: str | None, atol: float, rtol: float,
                        engine_logits: np.ndarray | None = None) -> Localisation:
        return self._unless_unreproduced(super().first_divergent(feed, stage, atol, rtol, engine_logits))

    def _unless_unreproduced(self, result: Localisation) -> Localisation:
        """``result``, or, where a run did not reproduce the engine's logits, none of its findings and why."""
        if result.reproduced is not False:
            return result
        result.first_nonfinite, result.more_nonfinite, result.first_divergent = None, [], None
        result.ranges = {}
        changed = ("changed which logits are finite" if result.reproduction_error == float("inf") else
                   f"moved its logits by up to {result.reproduction_error:.3g}, more than "
                   f"{REPRODUCTION_FRACTION:g} of the tolerance")
        result.note = (f"marking tensors as outputs of the OpenVINO model {changed}: it computed otherwise than the "
                       "engine under test, so node level found nothing on this input and it is judged at its probes")
        return result
