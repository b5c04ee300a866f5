"""The engines a diff compares, and what node-level localisation needs of each.

An ``Engine`` is a Polygraphy runner plus, when node level is possible, the engine's ONNX graph, the
fp32 graph it was built from, and a way to run an edited copy of the engine's graph (outputs
marked, statistics inserted) on the engine's backend with the engine's settings. When node level is
not possible, ``node_level_note`` says why, and the report repeats it.

Artifacts of ``brr-export`` are read from their (checked) manifests; an engine's fp32 graph is the
fp32 artifact given beside it, else the one its manifest names.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import onnx
from google.protobuf.message import DecodeError
from polygraphy.backend.base import BaseRunner

from brr.errors import InputError
from brr.export.manifest import fp32_reference, verify_manifest
from brr.onnx.edit import topologically_sorted
from brr.onnx.statistics import ObservedRanges
from brr.runtime.runners import load_runner
from brr.runtime.runners.onnxruntime import onnxruntime_runner


class TensorStatistics(Protocol):
    """Engine-side tensor statistics read by the backend itself (TensorRT debug tensors), for backends
    whose engine is not the ONNX graph node for node.

    ``materialise=False`` reads the engine as built: a tensor it computes without storing (fused) is
    absent from the result. ``materialise=True`` makes every named tensor observable, even where that
    changes what the backend fuses. ``ObservedRanges.method`` says which way was taken.
    """

    def __call__(self, names: list[str], feed: dict, materialise: bool = False) -> ObservedRanges: ...


class ArtifactError(InputError):
    """An engine artifact that cannot be used, with its path in the message."""


@dataclass
class Engine:
    name: str
    runner: BaseRunner
    precision: str = "fp32"
    onnx_model: onnx.ModelProto | None = None
    fp32_model: onnx.ModelProto | None = None
    # A runner on this engine's backend and settings for an edited copy of ``onnx_model``.
    runner_for: Callable[[onnx.ModelProto, str], BaseRunner] | None = None
    # When set, node level reads the engine's tensors through it instead of an instrumented copy of onnx_model.
    tensor_statistics: TensorStatistics | None = None
    node_level_note: str | None = None
    path: str | None = None  # the artifact folder, when the engine is one

    @property
    def localisable(self) -> bool:
        return self.onnx_model is not None and self.fp32_model is not None and self.runner_for is not None


lean_onnxruntime_runner = functools.partial(onnxruntime_runner, lean=True)


def onnxruntime_engine(model: onnx.ModelProto | str | Path, fp32_model: onnx.ModelProto | str | Path | None = None,
                       name: str | None = None, precision: str = "fp32") -> Engine:
    """An ONNX Runtime CPU engine of ``model``; ``fp32_model`` (its fp32 source) enables node level."""
    model = _load(model)
    fp32 = _load(fp32_model) if fp32_model is not None else (model if precision == "fp32" else None)
    name = name or f"onnxruntime-{precision}"
    note = None if fp32 is not None else "no fp32 ONNX graph of this engine was given: compared at its probes only"
    return Engine(name, onnxruntime_runner(model, name), precision, model, fp32, lean_onnxruntime_runner,
                  node_level_note=note)


class OnnxReferenceRunner(BaseRunner):
    """ONNX's numpy reference evaluator behind Polygraphy's runner interface.

    Every node computes in its graph's dtype and rounds its output there, so an fp16-typed graph shows
    the overflows and underflows of true fp16 arithmetic on any CPU. Slow: for small graphs.
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


def onnx_reference_engine(model: onnx.ModelProto, fp32_model: onnx.ModelProto, name: str, precision: str) -> Engine:
    """``model`` run by ``OnnxReferenceRunner``, node-level localisable against ``fp32_model``."""
    return Engine(name, OnnxReferenceRunner(model, name), precision, model, fp32_model, OnnxReferenceRunner)


def artifact_engines(paths: list[str | Path]) -> list[Engine]:
    """Engines of ``brr-export`` artifact folders, each paired with its fp32 ONNX graph for node level:
    the fp32 artifact of the same ops mode among ``paths``, else the one the engine's manifest names."""
    manifests = {Path(p): verify_manifest(p) for p in paths}  # ManifestError names the folder and the problem
    given_fp32 = {m["ops"]: p for p, m in manifests.items() if m["precision"] == "fp32" and m["backend"] == "onnxruntime"}
    engines = []
    for path, manifest in manifests.items():
        precision, backend = manifest["precision"], manifest["backend"]
        partner, why_not = (given_fp32[manifest["ops"]], None) if manifest["ops"] in given_fp32 else \
            fp32_reference(path, manifest)
        fp32 = _load(partner / manifest_model(partner)) if partner is not None else None
        runner = load_runner(path, probes=True, name=path.name, lean=True)
        if backend == "onnxruntime":
            note = None if fp32 is not None else f"node level skipped: {why_not}"
            engines.append(Engine(path.name, runner, precision, _load(path / manifest["model_file"]), fp32,
                                  lean_onnxruntime_runner, node_level_note=note))
        elif backend == "tensorrt":
            from brr.export.engines.tensorrt import tensorrt_engine_for_diff

            engines.append(tensorrt_engine_for_diff(path, manifest, runner, fp32, why_not))
        else:
            engines.append(Engine(path.name, runner, precision, node_level_note=(
                f"node level not available for {backend}: it compiles and fuses its own graph from the ONNX, so "
                "its intermediate tensors are not the ONNX graph's; compared at its probes (export an ONNX "
                "Runtime engine of the same precision to localise node by node)")))
    return engines


def manifest_model(directory: Path) -> str:
    return verify_manifest(directory)["model_file"]


def _load(model: onnx.ModelProto | str | Path) -> onnx.ModelProto:
    if isinstance(model, onnx.ModelProto):
        return model
    try:
        return onnx.load(str(model))
    except (OSError, DecodeError) as error:
        raise ArtifactError(f"{model}: not a readable ONNX model ({error})") from None
