"""INT8 calibration on EDF windows: ONNX Runtime static QDQ (runs here) and TensorRT through Polygraphy.

ONNX Runtime: the exporter's own ``QuantizeStaticQDQ`` (``onnxruntime.quantization.quantize_static``,
QDQ, per-channel, Conv and constant-weight MatMul) fed by ``WindowCalibrationReader`` over
``EdfBatches.arrays()``, so windows stream from the recordings. TensorRT: Polygraphy's ``Calibrator``
over ``EdfBatches`` (feeds ``{"eeg": batch}``) with a calibration cache, built by the exporter's one
TensorRT build configuration (``TensorRTBuild``, ``engine_loader``); needs TensorRT and a GPU.
"""

from __future__ import annotations

from pathlib import Path

import onnx

from brr.backends.trt.loader import CALIBRATION_CACHE_FILE, TensorRTBuild, engine_loader, import_tensorrt
from brr.calibration.windows import EdfBatches
from brr.onnx.quantize import QuantizeStaticQDQ
from brr.artifact.files import ONNX_FILE as MODEL_FILE

TENSORRT_ENGINE_FILE = "model.int8.engine"


def quantize_onnxruntime(model: Path, batches: EdfBatches, directory: Path) -> Path:
    """The int8 QDQ ``model.onnx`` (every probe an output, as its fp32 source) in ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    quantized = QuantizeStaticQDQ(model, batches.arrays(), fp32_nodes=[])()
    out = directory / MODEL_FILE
    onnx.save(quantized, str(out))
    return out


def tensorrt_calibrator(batches: EdfBatches, cache: Path):
    """Polygraphy's INT8 calibrator (TensorRT's entropy calibrator 2) over the EDF batches, cached in ``cache``."""
    from polygraphy.backend.trt import Calibrator

    return Calibrator(batches, cache=str(cache))


def build_tensorrt_int8(model: Path, batches: EdfBatches, directory: Path) -> Path:
    """A TensorRT INT8 engine of ``model`` (fp16 fallback), calibrated on ``batches``; writes the cache too.

    TensorRTUnavailable, with the one line to print, when TensorRT or the GPU is missing.
    """
    import_tensorrt()  # before the calibrator, which needs it
    from polygraphy.backend.common import SaveBytes

    batch, n_channels, window = batches.shape
    build = TensorRTBuild("int8", (batch, batch, batch), n_channels, window)
    loader, _ = engine_loader(build, model, calibrator=tensorrt_calibrator(batches, directory / CALIBRATION_CACHE_FILE))
    directory.mkdir(parents=True, exist_ok=True)
    engine_path = directory / TENSORRT_ENGINE_FILE
    SaveBytes(loader, str(engine_path))()
    return engine_path
