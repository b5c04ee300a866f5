"""TensorRT engines at every precision in both ops modes (needs tensorrt and a CUDA GPU)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from brr.backends import BACKENDS
from brr.backends.trt.loader import (
    CALIBRATION_CACHE_FILE,
    TIMING_CACHE_FILE,
    TensorRTUnavailable,
    import_tensorrt,
)
from brr.artifact.manifest import write_manifest
from brr.export.onnx_export import export_onnx
from brr.model import build_detector
from brr.artifact.load import load_runner

try:
    import_tensorrt()
    MISSING = None
except TensorRTUnavailable as exc:
    MISSING = str(exc)

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(MISSING is not None, reason=MISSING or "")]
BOUNDS = {"fp32": 1e-3, "fp16": 0.5, "bf16": 1.0, "int8": 2.0}


@pytest.mark.parametrize("ops", ["standard", "plugin"])
@pytest.mark.parametrize("precision", ["fp32", "fp16", "bf16", "int8"])
def test_tensorrt_engine_builds_and_runs(tmp_path, ops, precision):
    torch.manual_seed(1)
    model = build_detector("v3-small").eval()
    export = export_onnx(model, tmp_path / "onnx", ops)
    rng = np.random.default_rng(0)
    built = BACKENDS["tensorrt"].build(export.model, ops, tmp_path / "trt", precision, [], (1, 2, 3), model.config,
                                       [rng.standard_normal((1, 19, 15360)).astype(np.float32) for _ in range(2)])
    # What a rebuild for the diff needs to be this engine: its kernels' timings, and int8's scales.
    assert (tmp_path / "trt" / TIMING_CACHE_FILE).stat().st_size > 0
    assert (tmp_path / "trt" / CALIBRATION_CACHE_FILE).is_file() == (precision == "int8")
    write_manifest(tmp_path / "trt", source={}, config=model.config, backend="tensorrt", precision=precision,
                   ops=ops, opset=export.opset, model_file=built.model_file, pinned_nodes=[], batch=(1, 2, 3),
                   settings=built.settings)
    x = torch.randn(2, 19, 15360)
    with torch.no_grad():
        expected = model(x).numpy()
    with load_runner(tmp_path / "trt") as runner:
        logits = np.asarray(runner.infer({"eeg": x.numpy()})["logits"])
    assert np.isfinite(logits).all()
    assert np.abs(logits - expected).max() <= BOUNDS[precision]
