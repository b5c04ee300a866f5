"""The engines a diff compares, and how to run a marked copy of an ONNX-based engine's graph.

An ``Engine`` is a Polygraphy runner plus, when it runs an ONNX graph, that graph, the fp32 graph it
was derived from and a way to build a runner for an edited copy (outputs marked): that is what
node-level localisation needs. Artifacts of ``brr-export`` are read from their ``manifest.json``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from google.protobuf.message import DecodeError
from polygraphy.backend.base import BaseRunner
from polygraphy.backend.onnxrt import OnnxrtRunner

from brr.errors import InputError
from brr.export.manifest import read_manifest
from brr.ops.registry import load_ort_kernels

ONNX_FILE = "model.onnx"
STANDARD_DOMAINS = ("", "ai.onnx", "ai.onnx.ml")


class ArtifactError(InputError):
    """An engine artifact that cannot be used, with its path in the message."""


@dataclass
class Engine:
    name: str
    runner: BaseRunner
    precision: str = "fp32"
    onnx_model: onnx.ModelProto | None = None
    fp32_model: onnx.ModelProto | None = None
    # A runner on this engine's backend and precision for an edited copy of ``onnx_model``.
    runner_for: Callable[[onnx.ModelProto, str], BaseRunner] | None = None
    # Marking every tensor changes a TensorRT engine (fusions break): such engines are bisected.
    mark_all_safe: bool = True

    @property
    def localisable(self) -> bool:
        return self.onnx_model is not None and self.fp32_model is not None and self.runner_for is not None


def onnxruntime_runner(model: onnx.ModelProto, name: str, optimize: bool = True) -> OnnxrtRunner:
    """A CPU ONNX Runtime runner; sessions of graphs with custom nodes load the brr kernels.

    The CPU provider lacks fp16 kernels for most ops: it wraps them in Casts, and its graph
    optimisations then remove the Cast pairs, so an optimised fp16 graph computes in fp32 almost
    end to end. ``optimize=False`` keeps every node's output rounded to fp16, as a real fp16
    engine stores it (the overflows and underflows of fp16, at node granularity).
    """
    payload = model.SerializeToString()
    custom = any(node.domain not in STANDARD_DOMAINS for node in model.graph.node)

    def session() -> ort.InferenceSession:
        options = ort.SessionOptions()
        if not optimize:
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        if custom:
            import onnxruntime_extensions

            load_ort_kernels()
            options.register_custom_ops_library(onnxruntime_extensions.get_library_path())
        return ort.InferenceSession(payload, options, providers=["CPUExecutionProvider"])

    return OnnxrtRunner(session, name=name)


def onnxruntime_engine(model: onnx.ModelProto | str | Path, fp32_model: onnx.ModelProto | str | Path | None = None,
                       name: str | None = None, precision: str = "fp32", optimize: bool = True) -> Engine:
    """An ONNX Runtime CPU engine of ``model``; ``fp32_model`` enables node-level localisation."""
    model = _load(model)
    fp32 = _load(fp32_model) if fp32_model is not None else (model if precision == "fp32" else None)
    name = name or f"onnxruntime-{precision}"
    runner_for = functools.partial(onnxruntime_runner, optimize=optimize)
    return Engine(name, runner_for(model, name), precision, model, fp32, runner_for)


class OnnxReferenceRunner(BaseRunner):
    """ONNX's numpy reference evaluator behind Polygraphy's runner interface.

    Every node computes in its graph's dtype and rounds its output there, so an fp16 graph shows
    the overflows and underflows of true fp16 arithmetic on any CPU (ONNX Runtime's CPU provider
    computes most fp16 nodes in fp32, see ``onnxruntime_runner``). Slow: for small graphs.
    """

    def __init__(self, model: onnx.ModelProto, name: str | None = None):
        super().__init__(name=name, prefix="onnx-reference-runner")
        self.model = model
        self.evaluator = None

    def activate_impl(self):
        from onnx.reference import ReferenceEvaluator

        self.evaluator = ReferenceEvaluator(topologically_sorted(self.model))

    def get_input_metadata_impl(self):
        from polygraphy.backend.onnx.util import get_input_metadata

        return get_input_metadata(self.model.graph)

    def infer_impl(self, feed_dict):
        names = [o.name for o in self.model.graph.output]
        with np.errstate(all="ignore"):  # overflow to inf is what this runner is for
            return dict(zip(names, self.evaluator.run(names, feed_dict)))

    def deactivate_impl(self):
        self.evaluator = None


def topologically_sorted(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy whose top-level nodes are in dependency order (``convert_float_to_float16`` appends
    its input Casts at the end; ONNX Runtime sorts by itself, the reference evaluator does not)."""
    graph = model.graph
    available = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        ready = [n for n in pending if all(name in available for name in n.input)]
        if not ready:
            raise ValueError(f"graph {graph.name!r} has a cycle or an undefined input at {pending[0].name!r}")
        for node in ready:
            ordered.append(node)
            available.update(node.output)
        pending = [n for n in pending if n not in ready]
    copy = onnx.ModelProto.FromString(model.SerializeToString())
    del copy.graph.node[:]
    copy.graph.node.extend(ordered)
    return copy


def onnx_reference_engine(model: onnx.ModelProto, fp32_model: onnx.ModelProto, name: str, precision: str) -> Engine:
    """``model`` run by ``OnnxReferenceRunner``, node-level localisable against ``fp32_model``."""
    return Engine(name, OnnxReferenceRunner(model, name), precision, model, fp32_model, OnnxReferenceRunner)


def tensorrt_runner_factory(precision: str) -> Callable[[onnx.ModelProto, str], BaseRunner]:
    """Builds TensorRT engines for marked graphs with the precision flags of the engine under test."""

    def build(model: onnx.ModelProto, name: str) -> BaseRunner:
        from polygraphy.backend.trt import CreateConfig, EngineFromNetwork, NetworkFromOnnxBytes, TrtRunner

        config = CreateConfig(fp16=precision == "fp16", bf16=precision == "bf16", int8=precision == "int8")
        return TrtRunner(EngineFromNetwork(NetworkFromOnnxBytes(model.SerializeToString()), config=config), name=name)

    return build


def artifact_engines(paths: list[str | Path]) -> list[Engine]:
    """Engines of ``brr-export`` artifacts; a reduced-precision ONNX graph is paired with the fp32
    artifact of the same ops mode among ``paths`` for node-level localisation."""
    manifests = {Path(p): read_manifest(p) for p in paths}  # ManifestError names the file
    fp32_graphs = {m["ops"]: p / ONNX_FILE for p, m in manifests.items()
                   if m["precision"] == "fp32" and (p / ONNX_FILE).is_file()}
    engines = []
    for path, manifest in manifests.items():
        precision, backend = manifest["precision"], manifest["backend"]
        name = f"{path.name}"
        graph = path / ONNX_FILE
        fp32_graph = fp32_graphs.get(manifest["ops"])
        if backend == "onnxruntime":
            if not graph.is_file():
                raise ArtifactError(f"{path}: {ONNX_FILE} missing")
            engine = onnxruntime_engine(graph, fp32_graph, name=name, precision=precision)
            engine.runner = _load_runner(path) or engine.runner
        elif backend == "tensorrt":
            engine = Engine(name, _require_runner(path), precision, _load(graph) if graph.is_file() else None,
                            _load(fp32_graph) if fp32_graph else None, tensorrt_runner_factory(precision),
                            mark_all_safe=False)
        else:  # e.g. OpenVINO: compared at the outputs and probes it exposes, not node by node
            engine = Engine(name, _require_runner(path), precision)
        engines.append(engine)
    return engines


def _load_runner(path: Path) -> BaseRunner | None:
    """``brr.runtime.runners.load_runner`` of the exporter, where that module is installed."""
    try:
        from brr.runtime.runners import load_runner
    except ImportError:
        return None
    return load_runner(path, probes=True)


def _require_runner(path: Path) -> BaseRunner:
    runner = _load_runner(path)
    if runner is None:
        raise ArtifactError(f"{path}: this backend needs brr.runtime.runners.load_runner (brr-export)")
    return runner


def _load(model: onnx.ModelProto | str | Path) -> onnx.ModelProto:
    if isinstance(model, onnx.ModelProto):
        return model
    try:
        return onnx.load(str(model))
    except (OSError, DecodeError) as error:
        raise ArtifactError(f"{model}: not a readable ONNX model ({error})") from None
