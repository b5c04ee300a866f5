"""Engines, one folder per backend, as Polygraphy organises them: ``loader.py`` (lazy loaders that
build, convert and load, composed as callables) and ``runner.py`` (one ``BaseRunner`` lifecycle).

``BACKENDS`` holds one ``Backend`` (``brr.backends.base``) per kind of exported engine, under the name
manifests and ``--backend`` use: ``onnxruntime`` (``onnxrt/``), ``openvino`` (``openvino/``),
``tensorrt`` (``trt/``). Export, diff, calibration and serving look a backend up here and never branch
on it. ``torch/`` runs checkpoints, ``onnx_reference`` runs ONNX's reference evaluator.
"""

from __future__ import annotations

from brr.backends.base import Backend, BuiltEngine, EditedGraphs, EngineBuildError, TensorStatistics
from brr.backends.onnxrt import ONNXRUNTIME
from brr.backends.openvino import OPENVINO
from brr.backends.trt import TENSORRT
from brr.errors import DependencyUnavailable, UsageError

BACKENDS: dict[str, Backend] = {backend.name: backend for backend in (ONNXRUNTIME, OPENVINO, TENSORRT)}
BACKEND_CHOICES = ("auto", *BACKENDS)

__all__ = ["BACKENDS", "BACKEND_CHOICES", "Backend", "BuiltEngine", "EditedGraphs", "EngineBuildError",
           "TensorStatistics", "resolve_backend"]


def resolve_backend(name: str) -> Backend:
    """The backend ``name`` names, checked to run here (``DependencyUnavailable`` says what is missing);
    ``auto``: TensorRT when it imports and a GPU is visible, else ONNX Runtime."""
    if name not in BACKEND_CHOICES:
        raise UsageError(f"backend must be one of {BACKEND_CHOICES}, got {name!r}")
    if name == "auto":
        try:
            TENSORRT.require()
        except DependencyUnavailable:
            return ONNXRUNTIME
        return TENSORRT
    BACKENDS[name].require()  # fail before the export, with the one line that says what is missing
    return BACKENDS[name]
