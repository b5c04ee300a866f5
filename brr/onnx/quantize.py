"""Static int8 quantisation of an ONNX graph: ``onnxruntime.quantization.quantize_static`` in QDQ format.

Per-channel weights; Conv and constant-weight MatMul only (the selective scan's activation x
activation MatMuls are not worth int8); MinMax activation ranges calibrated on the given windows.
Symmetric int8 throughout, biases left in fp32: TensorRT builds the same Q/DQ graph only with zero
points of zeros and int8 (not int32) Q/DQ (``brr.onnx.strong_typing``).
ORT's calibrator makes its own sessions without brr's custom-op library, so the graph must hold
standard ops only.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
from polygraphy.backend.base import BaseLoader

from brr.errors import UsageError
from brr.model import INPUT_NAME
from brr.montage import N_CHANNELS

QUANTIZED_OP_TYPES = ("Conv", "MatMul")


class WindowCalibrationReader(CalibrationDataReader):
    """ORT's calibration reader over an iterable of float32 (B, 19, samples) batches."""

    def __init__(self, batches: Iterable[np.ndarray]):
        self._batches: Iterator[np.ndarray] = iter(batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._batches, None)
        if batch is None:
            return None
        batch = np.asarray(batch, dtype=np.float32)
        if batch.ndim != 3 or batch.shape[1] != N_CHANNELS:
            raise UsageError(f"calibration batches must be (B, 19, samples) float32, got {batch.shape}")
        return {INPUT_NAME: batch}


class QuantizeStaticQDQ(BaseLoader):
    """ONNX path -> int8 QDQ model, calibrated (MinMax) on ``batches``; ``fp32_nodes`` stay unquantised."""

    def __init__(self, model_path: Path, batches: Iterable[np.ndarray], fp32_nodes: Iterable[str]):
        super().__init__()
        self.model_path = Path(model_path)
        self.batches = batches
        self.fp32_nodes = sorted(fp32_nodes)

    def call_impl(self) -> onnx.ModelProto:
        with tempfile.TemporaryDirectory(prefix="brr-int8-") as tmp:
            out = Path(tmp) / "quantized.onnx"
            quantize_static(
                str(self.model_path), str(out), WindowCalibrationReader(self.batches),
                quant_format=QuantFormat.QDQ, per_channel=True, op_types_to_quantize=list(QUANTIZED_OP_TYPES),
                nodes_to_exclude=self.fp32_nodes, activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                # Only weights are worth int8 here: the scan's activation x activation MatMuls are not.
                extra_options={"MatMulConstBOnly": True, "ActivationSymmetric": True, "WeightSymmetric": True,
                               "QuantizeBias": False},
            )
            return onnx.load(str(out))
