"""An OpenVINO engine's intermediate tensors, read as extra outputs of its model, for the diff's node level.

The ONNX frontend gives each OpenVINO tensor it converts the name of the ONNX tensor it holds
(``Output.get_names()``), and the IR keeps those names: that is how the fp32 graph's tensors are found in the
engine. A tensor the frontend fused away (``x * sigmoid(x)`` became one Swish, a Transpose went into its
MatMul) or that brr's lowering rewrote (``lowering``: phases, the scan kernel's convolutions, norm and
projections) has no OpenVINO tensor of its own: it is not ``kept``, and cannot be read.

Reading a tensor is compiling a copy of the IR with it as an extra output (``Model.add_outputs``), with the
engine's hint and extensions, for the feed's static shapes, and running it. That changes what the CPU plugin
compiles: the marked tensor is stored, so a fusion across it is undone, and under a bf16 hint a tensor that is
an f32 output is handed in f32 to its consumers too, which the engine under test give it rounded. Under a
reduced-precision hint each tensor is therefore marked through a round trip to that precision, which leaves
its producer storing it as the engine does (and rounds the value read where the plugin kept it in f32).
Whatever marking still changes shows in the logits, which every run returns for the diff to compare with the
engine's own (``brr.diff.openvino_nodes``).

Memory: ``OpenVINOTensors`` reads ranges in runs of at most ``bytes_per_run`` of marked outputs (sizes from
the static shapes of the feed) and reduces each run's values to ``TensorRange``s while OpenVINO still holds
them; nothing else of a run is kept but its logits.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np
import onnx
import openvino as ov
from openvino import opset13 as opset
from polygraphy.backend.base import BaseRunner

from brr.backends.openvino.loader import CompiledModel
from brr.backends.openvino.runner import OpenVINORunner
from brr.model.contract import OUTPUT_NAME
from brr.onnx.statistics import ObservedRanges, TensorRange

# Marked outputs' bytes per run of ``OpenVINOTensors``: a run holds them all until it ends.
BYTES_PER_RUN = 256 * 2**20
# How the diff report names this way of reading an engine's tensors (``brr.diff.results.OBSERVATION``).
OBSERVED_BY = "openvino_outputs"
# INFERENCE_PRECISION_HINT -> the precision a marked tensor goes through (see the module's docstring).
REDUCED_HINTS = {"bf16": ov.Type.bf16, "f16": ov.Type.f16}
ROUND_TRIP = "::stored"  # the name of a marked tensor's round trip, after the tensor's


def kept_tensors(model: ov.Model) -> dict[str, ov.Output]:
    """ONNX tensor name -> the output of ``model`` that holds it (its producer's, never a Result's)."""
    found: dict[str, ov.Output] = {}
    for op in model.get_ordered_ops():
        if op.get_type_name() == "Result":
            continue
        for output in op.outputs():
            for name in output.get_names():
                found.setdefault(name, output)
    return found


def array_range(values: np.ndarray) -> TensorRange:
    """The ``TensorRange`` of a float32 array: fp32 accumulation, as ``brr.onnx.statistics.instrument``'s."""
    flat = np.ascontiguousarray(values, dtype=np.float32).reshape(-1)
    if flat.size == 0:
        return TensorRange(0.0, 0.0, 0.0, 0)
    return TensorRange(float(np.dot(flat, flat)), float(flat.max()), float(flat.min()), int(flat.size))


@dataclass
class MarkedRanges(ObservedRanges):
    """``ObservedRanges`` read in several runs: ``outputs`` are the first run's, ``run_logits`` every run's."""

    run_logits: list[np.ndarray] = field(default_factory=list)


class OpenVINOTensors:
    """The tensors of an OpenVINO engine (``compiled``: its IR, hint and extensions) that node level can read.

    Called as ``Engine.tensor_statistics``: the ranges of the kept ones of the names asked for, in as many
    runs as ``bytes_per_run`` needs (``materialise`` changes nothing: every kept tensor is read as computed,
    and no other can be). ``runner_for`` runs a copy of the fp32 graph with outputs marked (``mark_outputs``)
    on the engine: its marked tensors that the engine keeps come back beside the engine's own outputs.
    """

    def __init__(self, compiled: CompiledModel, bytes_per_run: int = BYTES_PER_RUN):
        self.compiled = compiled
        self.bytes_per_run = bytes_per_run
        model = compiled.read()
        self.kept = frozenset(kept_tensors(model))
        self.own_outputs = frozenset(name for output in model.outputs for name in output.get_names())
        self._sizes: dict[tuple, dict[str, int | None]] = {}  # feed shapes -> bytes of each kept tensor

    def __call__(self, names: list[str], feed: dict, materialise: bool = False) -> MarkedRanges:
        observed = MarkedRanges({}, {}, OBSERVED_BY)
        for group in self._groups([n for n in dict.fromkeys(names) if n in self.kept], feed):
            outputs, ranges = self._run(group, feed, array_range)
            observed.ranges.update(ranges)
            observed.outputs = observed.outputs or outputs
            observed.run_logits.append(outputs[OUTPUT_NAME])
        return observed

    def values(self, names: Iterable[str], feed: dict) -> dict[str, np.ndarray]:
        """One run: the engine's own outputs, and the float32 values of each of ``names`` it keeps."""
        outputs, marked = self._run(list(names), feed, np.array)
        return outputs | marked

    def runner_for(self, model: onnx.ModelProto, name: str) -> BaseRunner:
        """A runner of the engine that returns the outputs of ``model``, a marked copy of the fp32 graph."""
        return MarkedOpenVINORunner(self, [output.name for output in model.graph.output], name)

    def _run(self, names: list[str], feed: dict, keep: Callable[[np.ndarray], object]
             ) -> tuple[dict[str, np.ndarray], dict[str, object]]:
        """One run with the kept ones of ``names`` marked: (the engine's own outputs under each of their names,
        ``keep`` of each marked tensor's values, applied while OpenVINO holds them)."""
        feed = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in feed.items()}
        marked = [n for n in dict.fromkeys(names) if n in self.kept and n not in self.own_outputs]
        reduced = REDUCED_HINTS.get(str(self.compiled.config["INFERENCE_PRECISION_HINT"]))

        # The output each marked tensor is read from: itself, or its round trip, named after it.
        read_as = {tensor: tensor if reduced is None else f"{tensor}{ROUND_TRIP}" for tensor in marked}

        def mark(model: ov.Model) -> None:
            ports = kept_tensors(model)
            for tensor in marked:
                port = ports[tensor]
                if reduced is not None:
                    port = opset.convert(opset.convert(port, reduced), ov.Type.f32).output(0)
                    port.get_tensor().set_names({read_as[tensor]})
                model.add_outputs([port])

        compiled = self.compiled(_shapes(feed), edit=mark)
        results = compiled.create_infer_request().infer(feed)
        outputs = {alias: value for port in compiled.outputs if not port.get_names().isdisjoint(self.own_outputs)
                   for value in [np.array(results[port], copy=True)] for alias in port.get_names()}
        kept = {tensor: keep(results[compiled.output(read_as[tensor])]) for tensor in marked}
        kept |= {tensor: keep(outputs[tensor]) for tensor in names if tensor in outputs}
        return outputs, kept

    def _groups(self, names: list[str], feed: dict) -> Iterator[list[str]]:
        """``names`` in order, in runs of at most ``bytes_per_run`` marked bytes (a tensor of unknown size
        alone)."""
        sizes = self._sizes_for(feed)
        group: list[str] = []
        total = 0
        for name in names:
            size = sizes.get(name)
            size = self.bytes_per_run if size is None else size
            if group and total + size > self.bytes_per_run:
                yield group
                group, total = [], 0
            group.append(name)
            total += size
        if group:
            yield group

    def _sizes_for(self, feed: dict) -> dict[str, int | None]:
        shapes = _shapes(feed)
        key = tuple(sorted((name, tuple(shape)) for name, shape in shapes.items()))
        if key not in self._sizes:
            model = self.compiled.read()
            model.reshape({name: ov.PartialShape(list(shape)) for name, shape in shapes.items()})
            self._sizes[key] = {name: math.prod(d.get_length() for d in port.get_partial_shape()) * 4
                                if port.get_partial_shape().is_static else None
                                for name, port in kept_tensors(model).items()}
        return self._sizes[key]


class MarkedOpenVINORunner(OpenVINORunner):
    """The engine, compiled at each ``infer`` with ``names`` (those it keeps) as extra outputs."""

    def __init__(self, tensors: OpenVINOTensors, names: list[str], name: str | None = None):
        super().__init__(tensors.compiled, name=name)
        self.tensors = tensors
        self.names = names

    def infer_impl(self, feed_dict):
        start = time.perf_counter()
        outputs = self.tensors.values(self.names, feed_dict)
        self.inference_time = time.perf_counter() - start
        return outputs


def _shapes(feed: dict) -> dict[str, list[int]]:
    return {name: list(np.shape(value)) for name, value in feed.items()}
