"""Engine builders, one module per backend; ``build_engine`` picks the backend's builder.

Every builder writes one model file (every probe an output, as in the fp32 export) into the engine
directory; the caller writes the manifest.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from brr.export.engines.onnxruntime import EngineBuildError
from brr.export.engines.tensorrt import TensorRTUnavailable, import_tensorrt
from brr.export.onnx_export import MODEL_FILE, OnnxExport
from brr.model import DetectorConfig

BACKEND_CHOICES = ("auto", "onnxruntime", "openvino", "tensorrt")

__all__ = ["BACKEND_CHOICES", "BuiltEngine", "EngineBuildError", "TensorRTUnavailable", "build_engine",
           "resolve_backend"]


@dataclass(frozen=True)
class BuiltEngine:
    model_file: str
    pinned_nodes: list[str]
    settings: dict


def resolve_backend(backend: str) -> str:
    """``auto`` -> tensorrt when it imports and a GPU is visible, else onnxruntime; explicit tensorrt is checked."""
    if backend not in BACKEND_CHOICES:
        raise ValueError(f"backend must be one of {BACKEND_CHOICES}, got {backend!r}")
    if backend == "tensorrt":
        import_tensorrt()  # fail before the export, with the one line that says what is missing
    if backend != "auto":
        return backend
    try:
        import_tensorrt()
    except TensorRTUnavailable:
        return "onnxruntime"
    return "tensorrt"


def build_engine(reference: OnnxExport, directory: Path, backend: str, precision: str, fp32_nodes: list[str],
                 batch: tuple[int, int, int], config: DetectorConfig,
                 calibration: Callable[[], Iterable[np.ndarray]]) -> BuiltEngine:
    """Build ``precision`` on ``backend`` from the reference export; ``calibration`` is called for int8 only."""
    windows = calibration() if precision == "int8" else None
    if backend == "onnxruntime":
        from brr.export.engines.onnxruntime import build_onnxruntime_engine

        settings = build_onnxruntime_engine(reference, directory, precision, fp32_nodes, windows)
        return BuiltEngine(MODEL_FILE, fp32_nodes, settings)
    if backend == "openvino":
        from brr.export.engines import openvino

        settings = openvino.build_openvino_engine(reference, directory, precision)
        return BuiltEngine(openvino.MODEL_FILE, [], settings)
    if backend == "tensorrt":
        from brr.export.engines import tensorrt

        settings = tensorrt.build_tensorrt_engine(reference, directory, precision, fp32_nodes, batch,
                                                  config.n_channels, config.window_samples, windows)
        return BuiltEngine(tensorrt.MODEL_FILE, fp32_nodes, settings)
    raise EngineBuildError(f"unknown backend {backend!r}")
