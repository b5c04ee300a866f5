"""INT8 on EDF windows: ONNX Runtime static QDQ (runs here), and the TensorRT engine of that Q/DQ graph.

ONNX Runtime: the exporter's own ``QuantizeStaticQDQ`` (``onnxruntime.quantization.quantize_static``,
QDQ, per-channel, Conv and constant-weight MatMul) fed by ``WindowCalibrationReader`` over
``EdfBatches.arrays()``, so windows stream from the recordings. TensorRT builds the same Q/DQ graph
strongly typed, its scales the graph's (explicit quantization: no calibration of its own), by the
exporter's one TensorRT build configuration (``TensorRTBuild``, ``engine_loader``); needs TensorRT and
a GPU.
"""

from __future__ import annotations

from pathlib import Path

import onnx

from brr.artifact.files import ONNX_FILE as MODEL_FILE
from brr.backends.trt.loader import TensorRTBuild, engine_loader, import_tensorrt
from brr.calibration.windows import EdfBatches
from brr.onnx.quantize import QuantizeStaticQDQ

TENSORRT_ENGINE_FILE = "model.int8.engine"


def quantize_onnxruntime(model: Path, batches: EdfBatches, directory: Path) -> Path:
    """The int8 QDQ ``model.onnx`` (every probe an output, as its fp32 source) in ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    quantized = QuantizeStaticQDQ(model, batches.arrays(), fp32_nodes=[])()
    out = directory / MODEL_FILE
    onnx.save(quantized, str(out))
    return out


def build_tensorrt_int8(qdq_model: Path, shape: tuple[int, int, int], directory: Path) -> Path:
    """A TensorRT engine of the Q/DQ graph ``qdq_model`` (``quantize_onnxruntime``'s) for (batch, channels,
    samples) ``shape``, in ``directory``.

    TensorRTUnavailable, with the one line to print, when TensorRT or the GPU is missing.
    """
    import_tensorrt()  # before any work
    batch, n_channels, window = shape
    loader, _ = engine_loader(TensorRTBuild("int8", (batch, batch, batch), n_channels, window), qdq_model)
    directory.mkdir(parents=True, exist_ok=True)
    engine_path = directory / TENSORRT_ENGINE_FILE
    engine_path.write_bytes(loader())
    return engine_path
