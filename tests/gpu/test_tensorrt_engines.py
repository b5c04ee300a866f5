"""TensorRT engines at every precision in both ops modes, strongly typed from the typed graph (needs TensorRT
>= 10.12 and a CUDA GPU)."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch

from brr.artifact.files import STAGES_FILE
from brr.artifact.load import load_runner
from brr.artifact.manifest import write_manifest
from brr.backends import BACKENDS, EngineBuildError
from brr.backends.base import Int8Calibration
from brr.backends.onnxrt.loader import build_engine as write_onnxruntime_engine
from brr.backends.trt.loader import NETWORK_FILE, TIMING_CACHE_FILE, TensorRTUnavailable, import_tensorrt
from brr.export.onnx_export import export_onnx
from brr.export.precision_plan import default_plan
from brr.model import OUTPUT_NAME, PROBE_NAMES, build_detector
from brr.model.checkpoint import file_sha256

try:
    import_tensorrt()
    MISSING = None
except TensorRTUnavailable as exc:
    MISSING = str(exc)

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(MISSING is not None, reason=MISSING or "")]
BOUNDS = {"fp32": 1e-3, "fp16": 0.5, "bf16": 1.0, "int8": 2.0}
PLUGIN_IDS = {"brr::SelectiveScan", "brr::SymmetricEigh"}


@pytest.mark.parametrize("ops", ["standard", "plugin"])
@pytest.mark.parametrize("precision", ["fp32", "fp16", "bf16", "int8"])
def test_tensorrt_engine_is_built_from_the_typed_graph_and_runs(tmp_path, ops, precision):
    torch.manual_seed(1)
    model = build_detector("v3-small").eval()
    export = export_onnx(model, tmp_path / "onnx", ops)
    rng = np.random.default_rng(0)
    windows = [rng.standard_normal((1, 19, 15360)).astype(np.float32) for _ in range(2)]
    plan = default_plan(precision) if precision in ("fp16", "bf16") else None
    pinned = plan.resolve(export.model, json.loads((export.directory / STAGES_FILE).read_text())) if plan else []
    arguments = (export.model, ops, tmp_path / "trt", precision, pinned, (1, 2, 3), model.config,
                 Int8Calibration(windows))
    if precision == "int8" and ops == "plugin":
        with pytest.raises(EngineBuildError, match="--ops standard"):
            BACKENDS["tensorrt"].build(*arguments)
        return
    built = BACKENDS["tensorrt"].build(*arguments)
    settings = built.settings
    typed = tmp_path / "trt" / NETWORK_FILE
    if precision == "int8":
        assert {"QuantizeLinear", "DequantizeLinear"} <= {n.op_type for n in onnx.load(str(typed)).graph.node}
    else:  # the ONNX Runtime engine of the same precision and plan, byte for byte (fp32: the export itself)
        reference = export.model
        if precision != "fp32":
            write_onnxruntime_engine(export.model, ops, tmp_path / "ort", precision, pinned)
            reference = tmp_path / "ort" / NETWORK_FILE
        assert file_sha256(typed) == file_sha256(reference) == settings["network_sha256"]
    assert (settings["strongly_typed"], settings["tf32"]) == (True, False)
    assert settings["plugins"] == ({plugin: "aot" for plugin in PLUGIN_IDS} if ops == "plugin" else {})
    assert settings["debug_tensors"] == [name for name in PROBE_NAMES if name != OUTPUT_NAME]
    assert (tmp_path / "trt" / TIMING_CACHE_FILE).stat().st_size > 0
    write_manifest(tmp_path / "trt", source={}, config=model.config, backend="tensorrt", precision=precision,
                   ops=ops, opset=export.opset, model_file=built.model_file, pinned_nodes=pinned, batch=(1, 2, 3),
                   settings=settings)

    x = torch.randn(2, 19, 15360)
    with torch.no_grad():
        expected = model(x).numpy()
    with load_runner(tmp_path / "trt") as runner:
        served = runner.infer({"eeg": x.numpy()})
        logits = np.array(served["logits"])
        assert list(served) == ["logits"]  # the serving engine's only output
        assert [runner.engine.get_tensor_name(i) for i in range(runner.engine.num_io_tensors)] == ["eeg", "logits"]
    assert np.isfinite(logits).all() and np.abs(logits - expected).max() <= BOUNDS[precision]
    with load_runner(tmp_path / "trt", probes=True) as runner:  # the same engine, its probes as debug tensors
        probed = runner.infer({"eeg": x.numpy()})
    assert set(probed) == set(PROBE_NAMES) and np.array_equal(probed["logits"], logits)
    assert all(np.isfinite(probed[name]).all() for name in PROBE_NAMES)
