"""ONNX Runtime engines (CPU execution provider): fp32, fp16, bf16 and int8 ONNX models.

Each engine is a chain of Polygraphy-style loaders over the fp32 export (every probe an output),
saved as the engine's one ``model.onnx``.

* fp16 and bf16: weights stored in the reduced precision and every stored activation rounded through
  it by explicit Cast pairs, arithmetic in fp32 kernels (``RoundThroughLowPrecision``): what TensorRT
  stores between its fp16 layers. ONNX Runtime's CPU provider has no fp16 or bf16 kernels for most of
  this graph's ops (MatMul, Mul, Conv, Where, ...): on a model converted to fp16 it inserts its own
  casts and then drops the cast pairs between two fp32-computing nodes, but only where the value has
  no other consumer, so marking an output changed what the engine computed (measured: logits moved
  by 0.07, and a planted fp16 overflow did not appear at all). The explicit rounding is computed the
  same whoever consumes a value, at every optimisation level.
* int8: ``onnxruntime.quantization.quantize_static`` in QDQ format, Conv and constant-weight MatMul
  only, calibrated on the given windows. ORT's calibrator makes its own sessions without the custom-op
  library, so int8 needs the standard-ops export.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from polygraphy.backend.onnx import OnnxFromPath, SaveOnnx

from brr.errors import UsageError
from brr.export.onnx_export import MODEL_FILE, OnnxExport
from brr.onnx.precision import RoundThroughLowPrecision, low_precision_model
from brr.onnx.quantize import QuantizeStaticQDQ

class EngineBuildError(UsageError):
    """An engine that cannot be built as asked; the message says why and what to do."""


def build_onnxruntime_engine(
    reference: OnnxExport, directory: Path, precision: str, fp32_nodes: list[str],
    calibration: Iterable[np.ndarray] | None = None,
) -> dict:
    """Write ``model.onnx`` of ``precision`` into ``directory``; returns settings."""
    source = OnnxFromPath(str(reference.model))
    if precision in RoundThroughLowPrecision.DTYPES:
        converted = functools.partial(low_precision_model, source(), fp32_nodes, precision)
    elif precision == "int8":
        if reference.ops != "standard":
            raise EngineBuildError(
                "int8 on ONNX Runtime needs --ops standard: ORT's calibrator cannot load the custom-op library"
            )
        if calibration is None:
            raise EngineBuildError("int8 needs calibration windows (--calibration-data)")
        converted = QuantizeStaticQDQ(reference.model, calibration, fp32_nodes)
    else:
        raise EngineBuildError(f"ONNX Runtime engine precision must be fp16, bf16 or int8 here, got {precision!r}")
    directory.mkdir(parents=True, exist_ok=True)
    SaveOnnx(converted, str(directory / MODEL_FILE))()
    return {"execution_provider": "CPUExecutionProvider",
            "computes_in": {"fp16": "fp32 kernels on fp16-rounded tensors",
                            "bf16": "fp32 kernels on bf16-rounded tensors",
                            "int8": "int8 QDQ Conv/MatMul"}[precision]}
