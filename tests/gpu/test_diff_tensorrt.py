"""brr-diff on TensorRT fp16: a cosine-similarity norm that overflows fp16, localised by bisection
(marking every tensor would break TensorRT's fusions, so the marked engine could pass)."""

from __future__ import annotations

import importlib.util

import pytest
import torch

pytestmark = pytest.mark.gpu
if importlib.util.find_spec("tensorrt") is None or not torch.cuda.is_available():
    pytest.skip("needs TensorRT and a CUDA GPU (pip install -e '.[gpu]')", allow_module_level=True)

from torch import nn

from brr.diff import Engine, SyntheticWindows, run_diff
from brr.diff.engines import onnxruntime_runner, tensorrt_runner_factory

WINDOW = 1920


class Edge(nn.Module):
    def forward(self, h):
        f = 400.0 * torch.tanh(h)
        norm = f.pow(2).sum(1, keepdim=True).sqrt()  # 16 squares of up to 1.6e5: inf in fp16
        return (f / norm).transpose(1, 2) @ (f / norm)[:, :, :19]


class CosineNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.tcn, self.edge_stream, self.head = nn.Conv1d(19, 16, 16, stride=16), Edge(), nn.Linear(19, 4)

    def forward(self, eeg):
        return self.head(self.edge_stream(self.tcn(eeg))).flatten(1)


def test_tensorrt_fp16_overflow_is_bisected_to_the_edge_stage():
    torch.manual_seed(0)
    model = CosineNet().eval()
    fp32 = torch.onnx.export(model, (torch.randn(1, 19, WINDOW),), dynamo=True, input_names=["eeg"],
                             output_names=["logits"]).model_proto
    build = tensorrt_runner_factory("fp16")
    engine = Engine("tensorrt-fp16", build(fp32, "tensorrt-fp16"), "fp16", fp32, fp32, build, mark_all_safe=False)
    report = run_diff(onnxruntime_runner(fp32, "fp32-reference"), [engine], SyntheticWindows(1, WINDOW), 1e-2, 1e-2)
    result = report.engines[0].inputs[0]
    if result.verdict == "nonfinite_precision":
        level = result.node_level
        assert level.mode == "bisection" and level.reproduced is not None
        assert level.first_nonfinite["stage"] == "edge_similarity"
    else:  # TensorRT kept the norm in fp32: then nothing may be reported as non-finite
        assert result.verdict in ("clean", "divergence") and report.engines[0].stages["logits"].engine_nonfinite == 0
