"""The engines a diff compares, and what node-level localisation needs of each.

An ``Engine`` is a Polygraphy runner plus, when node level is possible, the engine's ONNX graph, the
fp32 graph it was built from, and a way to run an edited copy of the engine's graph (outputs
marked, statistics inserted) on the engine's backend with the engine's settings. When node level is
not possible, ``node_level_note`` says why, and the report repeats it.

Artifacts of ``brr-export`` are read from their (checked) manifests; an engine's fp32 graph is the
fp32 artifact given beside it, else the one its manifest names. ``split_engine`` is an artifact's front and
rest graphs (``brr.model.front``) run one after the other on whole windows.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError
from polygraphy.backend.base import BaseRunner

from brr.artifact.files import is_checkpoint, is_reference
from brr.artifact.load import load_runner, load_split_runners
from brr.artifact.manifest import fp32_reference, read_manifest, verify_manifest
from brr.backends import BACKENDS, EngineBuildError, TensorStatistics
from brr.backends.onnx_reference import OnnxReferenceRunner
from brr.backends.onnxrt.runner import lean_onnxruntime_runner, onnxruntime_runner
from brr.backends.split import ComposedRunner
from brr.errors import InputError


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


def onnxruntime_engine(model: onnx.ModelProto | str | Path, fp32_model: onnx.ModelProto | str | Path | None = None,
                       name: str | None = None, precision: str = "fp32") -> Engine:
    """An ONNX Runtime CPU engine of ``model``; ``fp32_model`` (its fp32 source) enables node level."""
    model = _load(model)
    fp32 = _load(fp32_model) if fp32_model is not None else (model if precision == "fp32" else None)
    name = name or f"onnxruntime-{precision}"
    note = None if fp32 is not None else "no fp32 ONNX graph of this engine was given: compared at its probes only"
    return Engine(name, onnxruntime_runner(model, name), precision, model, fp32, lean_onnxruntime_runner,
                  node_level_note=note)


def onnx_reference_engine(model: onnx.ModelProto, fp32_model: onnx.ModelProto, name: str, precision: str) -> Engine:
    """``model`` run by ``OnnxReferenceRunner``, node-level localisable against ``fp32_model``."""
    return Engine(name, OnnxReferenceRunner(model, name), precision, model, fp32_model, OnnxReferenceRunner)


def artifact_engines(paths: list[str | Path]) -> list[Engine]:
    """Engines of ``brr-export`` artifact folders, each paired with its fp32 ONNX graph for node level:
    the fp32 artifact of the same ops mode among ``paths``, else the one the engine's manifest names."""
    manifests = {Path(p): verify_manifest(p) for p in paths}  # ManifestError names the folder and the problem
    given_fp32 = {m["ops"]: p for p, m in manifests.items() if is_reference(m)}
    engines = []
    for path, manifest in manifests.items():
        partner, why_not = (given_fp32[manifest["ops"]], None) if manifest["ops"] in given_fp32 else \
            fp32_reference(path, manifest)
        fp32 = _load(partner / manifest_model(partner)) if partner is not None else None
        runner = load_runner(path, probes=True, name=path.name, lean=True)
        engines.append(artifact_engine(path, manifest, runner, fp32, why_not))
    return engines


def artifact_engine(path: Path, manifest: dict, runner: BaseRunner, fp32: onnx.ModelProto | None,
                     why_not: str | None) -> Engine:
    """The engine of one artifact: node level where its backend can run edited copies of its graph as it was
    built, and the fp32 graph it was built from is at hand; else why not."""
    backend, precision = BACKENDS[manifest["backend"]], manifest["precision"]
    if backend.node_level_unavailable is not None:
        return Engine(path.name, runner, precision, node_level_note=backend.node_level_unavailable)
    if fp32 is None:
        return Engine(path.name, runner, precision, node_level_note=f"node level skipped: {why_not}")
    try:
        edited = backend.edited_graphs(path, manifest, fp32)
    except EngineBuildError as error:
        return Engine(path.name, runner, precision, node_level_note=f"node level skipped: {error}")
    return Engine(path.name, runner, precision, edited.graph, fp32, edited.runner_for,
                  tensor_statistics=edited.tensor_statistics, node_level_note=edited.note)


def split_engine(path: str | Path) -> Engine:
    """The front and rest of an artifact that holds them (or of a checkpoint, in PyTorch), composed: the pair
    that overlap inference serves, compared at the probes of both."""
    path = Path(path)
    split = load_split_runners(path, probes=True)
    precision = "fp32" if is_checkpoint(path) else read_manifest(path)["precision"]
    name = f"{path.name}-front+rest"
    return Engine(name, ComposedRunner(split, name), precision, path=str(path),
                  node_level_note="the front and the rest run as two graphs: compared at their probes")


def manifest_model(directory: Path) -> str:
    return verify_manifest(directory)["model_file"]


def _load(model: onnx.ModelProto | str | Path) -> onnx.ModelProto:
    if isinstance(model, onnx.ModelProto):
        return model
    try:
        return onnx.load(str(model))
    except (OSError, DecodeError) as error:
        raise ArtifactError(f"{model}: not a readable ONNX model ({error})") from None
