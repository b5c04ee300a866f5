"""brr-diff on TensorRT, end to end: the engine's tensors read as debug tensors of the engine as built.

Two engines, each built strongly typed by the one TensorRT build configuration from a typed graph: a
planted fp16 overflow (a cosine norm whose squares pass 65504, as in tests/planted_nets.py, in brr's
fp16 graph), and a v3-small artifact of brr-export, whose served engine gives its probes as debug tensors.
"""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import onnx
import pytest
import torch

pytestmark = pytest.mark.gpu
if importlib.util.find_spec("tensorrt") is None or not torch.cuda.is_available():
    pytest.skip("needs TensorRT and a CUDA GPU (pip install -e '.[gpu]')", allow_module_level=True)

from polygraphy.backend.trt import EngineFromBytes
from torch import nn

from brr.backends.onnxrt.runner import lean_onnxruntime_runner, onnxruntime_runner
from brr.backends.trt.debug import TensorRTDebugStatistics
from brr.backends.trt.loader import (
    NETWORK_FILE,
    TIMING_CACHE_FILE,
    TensorRTBuild,
    TensorRTRebuild,
    engine_loader,
)
from brr.backends.trt.runner import TensorRTEngineRunner
from brr.diff import SyntheticWindows, artifact_engines, run_diff, validate
from brr.diff.engines import Engine
from brr.diff.localise import NodeLocaliser
from brr.export.run import ExportRequest, export_artifacts
from brr.model import PROBE_NAMES, build_detector, save_checkpoint
from brr.onnx.precision import low_precision_model

WINDOW = 1920


class Edge(nn.Module):
    def forward(self, h):
        f = 400.0 * torch.tanh(h)
        norm = f.pow(2).sum(1, keepdim=True).sqrt()  # 16 squares of up to 1.6e5: inf in fp16
        return (f / norm).transpose(1, 2) @ (f / norm)[:, :, :19]


class CosineNet(nn.Module):
    """Module names as V3Detector's, so the stage map tags the norm edge_similarity."""

    def __init__(self):
        super().__init__()
        self.tcn, self.edge_stream, self.head = nn.Conv1d(19, 16, 16, stride=16), Edge(), nn.Linear(19, 4)

    def forward(self, eeg):
        return self.head(self.edge_stream(self.tcn(eeg))).flatten(1)


def test_planted_fp16_overflow_is_localised_by_debug_tensors(tmp_path):
    torch.manual_seed(0)
    fp32 = torch.onnx.export(CosineNet().eval(), (torch.randn(1, 19, WINDOW),), dynamo=True, input_names=["eeg"],
                             output_names=["logits"]).model_proto
    typed = low_precision_model(fp32, [], "fp16")  # what brr builds an fp16 engine from: no fp32 island
    onnx.save(typed, str(tmp_path / NETWORK_FILE))
    build = TensorRTBuild("fp16", (1, 1, 1), 19, WINDOW)
    loader, _ = engine_loader(build, tmp_path / NETWORK_FILE, save_timing_cache=tmp_path / TIMING_CACHE_FILE)
    rebuild = TensorRTRebuild(build, tmp_path)
    engine = Engine("tensorrt-fp16", TensorRTEngineRunner(EngineFromBytes(loader()), name="tensorrt-fp16"), "fp16",
                    typed, fp32, rebuild.runner_for, tensor_statistics=TensorRTDebugStatistics(typed, rebuild))
    report = run_diff(onnxruntime_runner(fp32, "fp32-reference"), [engine], SyntheticWindows(1, WINDOW), 1e-2, 1e-2,
                      report_dir=tmp_path / "report")
    validate(json.loads((tmp_path / "report" / "report.json").read_text()))
    result = report.engines[0].inputs[0]
    # Strongly typed, the engine stores the squares in fp16 as its graph says: they overflow.
    assert result.verdict == "nonfinite_precision"
    level = result.node_level
    assert level.observed_by[0] == "debug_tensors"
    assert level.reproduced is True  # the debug-tensor engine computed what the engine under test computed
    first = level.first_nonfinite
    assert first.stage == "edge_similarity" and first.op_type in ("Pow", "ReduceSum", "Sqrt")
    assert "TensorRT debug tensors" in (tmp_path / "report" / "report.md").read_text()
    assert first.module is not None and first.module.path == "edge_stream"  # Edge.forward made it
    # Its fused kernels are no ONNX node: origin or propagator is not judged, and the report says why.
    assert first.roles.nodes == [] and "compiles its own fused kernels" in first.roles.note
    # The repro bundle: the origin cut out of the typed graph, its inputs read from the TensorRT engine.
    bundle = json.loads((tmp_path / "report" / "repro" / "bundle.json").read_text())
    cut = bundle["engines"][0]["origin"]
    assert cut["node"] == first.node and cut["subgraph"] is not None, cut
    assert cut["reproduced_on_onnxruntime"] is not None, cut


def test_exported_artifact_is_read_as_built(tmp_path):
    torch.manual_seed(1)
    save_checkpoint(build_detector("v3-small").eval(), tmp_path / "ckpt")
    exported = export_artifacts(ExportRequest(tmp_path / "ckpt", tmp_path / "out", engine="fp16", backend="tensorrt",
                                              batch=(1, 1, 1)))
    assert (exported.engine_dir / TIMING_CACHE_FILE).is_file() and (exported.engine_dir / NETWORK_FILE).is_file()
    (engine,) = artifact_engines([exported.engine_dir])
    assert engine.localisable and engine.node_level_note is None
    feed = {"eeg": np.random.default_rng(0).standard_normal((1, 19, 15360)).astype(np.float32)}
    with engine.runner as runner:  # the served engine, its probes read as debug tensors
        outputs = runner.infer(feed)
        served = np.array(outputs["logits"])
    assert set(outputs) == set(PROBE_NAMES)
    names = [t.name for t in NodeLocaliser(engine, lean_onnxruntime_runner).tensors]

    observed = engine.tensor_statistics(names, feed)
    assert observed.method == "debug_tensors"
    # Rebuilt with the export's settings and timing cache: the same kernels, the same logits.
    np.testing.assert_allclose(observed.outputs["logits"], served, rtol=1e-5, atol=1e-5)
    assert set(PROBE_NAMES) <= set(observed.ranges) <= set(names)
    # Unfused debug tensors are reported under the network's (ONNX) tensor names, not only the probes.
    assert len(observed.ranges) > 2 * len(PROBE_NAMES)
    assert all(r.finite and r.size > 0 for r in observed.ranges.values())

    some = names[: len(names) // 2: max(1, len(names) // 16)]
    materialised = engine.tensor_statistics(some, feed, materialise=True)
    assert materialised.method == "marked_debug_tensors"
    assert set(materialised.ranges) <= set(some) and len(materialised.ranges) >= len(some) // 2
