"""Tiny detectors with one planted fp16 hazard each, and their fp32/fp16 ONNX pair, for the diff's tests.

Module names follow ``V3Detector`` (tcn, edge_stream, positional_encoding, head) so that
``brr.onnx.stages.node_stages`` maps their nodes to probe stages. The fp16 graph is converted with
fp32 inputs and outputs (keep_io_types); ``diff`` runs it on ONNX's reference evaluator, which rounds
every node's output to fp16 (ONNX Runtime's CPU provider would compute most of these nodes in fp32 and
hide the hazards).
"""

from __future__ import annotations

import onnx
import torch
from onnxruntime.transformers.float16 import convert_float_to_float16
from torch import nn

from brr.backends.onnxrt.runner import onnxruntime_runner
from brr.diff import SyntheticWindows, run_diff
from brr.diff.engines import onnx_reference_engine

WINDOW = 1920


class TCN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(19, 16, 16, stride=16)

    def forward(self, x):
        return torch.tanh(self.conv(x))  # (B, 16, T), |h| <= 1


class CosineSimilarity(nn.Module):
    """The squared feature norm of a cosine similarity: scale * |h| <= scale, squares up to scale^2."""

    def __init__(self, scale: float):
        super().__init__()
        self.scale = scale

    def forward(self, h):
        f = self.scale * h
        squares = f.pow(2).transpose(1, 2)  # the Pow overflows fp16 once scale > 256
        norm = squares.sum(-1, keepdim=True).sqrt()  # (B, T, 1)
        gram = f.transpose(1, 2) @ f[:, :, :19]  # (B, T, 19)
        return gram / (norm * norm[:, :19].transpose(1, 2))


class Project(nn.Module):
    """An unguarded softplus, log(1 + exp(raw)): exp overflows fp16 above ~11, underflows below ~-17."""

    def __init__(self, shift: float, gain: float):
        super().__init__()
        self.shift, self.gain = shift, gain

    def forward(self, h):
        weights = torch.exp(self.gain * h[:, :1] + self.shift).transpose(1, 2)  # (B, T, 1)
        return torch.log1p(weights)


class EdgeWeights(nn.Module):
    def __init__(self, shift: float, gain: float):
        super().__init__()
        self.project = Project(shift, gain)

    def forward(self, h):
        return self.project(h)


class DegreeNormalisation(nn.Module):
    """D^-1/2 A with no clamp: a degree that is 0 in fp16 gives inf."""

    def forward(self, w):
        a = w * w[:, :19].transpose(1, 2)  # (B, T, 19)
        degree = a.transpose(1, 2).sum(1).unsqueeze(-1)  # (B, 19, 1) via a stored transpose
        return a * degree.pow(-0.5)


class Head(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(19, 16)

    def forward(self, e):
        return self.lin(e).flatten(1)


class CosineNet(nn.Module):
    def __init__(self, scale: float):
        super().__init__()
        self.tcn, self.edge_stream, self.head = TCN(), CosineSimilarity(scale), Head()

    def forward(self, eeg):
        return self.head(self.edge_stream(self.tcn(eeg)))


class SoftplusNet(nn.Module):
    def __init__(self, shift: float, gain: float):
        super().__init__()
        self.tcn, self.edge_stream = TCN(), EdgeWeights(shift, gain)
        self.positional_encoding, self.head = DegreeNormalisation(), Head()

    def forward(self, eeg):
        return self.head(self.positional_encoding(self.edge_stream(self.tcn(eeg))))


PLANTED = {
    # name: (model factory, op type of the first node non-finite in fp16, its stage)
    "cosine_norm": (lambda: CosineNet(400.0), "Pow", "edge_similarity"),
    "softplus_exp": (lambda: SoftplusNet(12.0, 4.0), "Exp", "edge_weights"),
    "zero_degree": (lambda: SoftplusNet(-11.0, 1.0), "Pow", "laplacian_pe"),
}


def export_pair(model: nn.Module, seed: int = 0) -> tuple[onnx.ModelProto, onnx.ModelProto]:
    """(fp32 graph, fp16 graph with fp32 inputs and outputs)."""
    torch.manual_seed(seed)
    for p in model.parameters():
        nn.init.normal_(p, std=0.1)
    x = torch.randn(1, 19, WINDOW)
    program = torch.onnx.export(model.eval(), (x,), dynamo=True, input_names=["eeg"], output_names=["logits"],
                                dynamic_shapes=({0: torch.export.Dim("batch")},), verbose=False)
    fp32 = program.model_proto
    return fp32, convert_float_to_float16(onnx.ModelProto.FromString(fp32.SerializeToString()), keep_io_types=True)


ATOL = RTOL = 1e-2


def diff(fp32, fp16, tmp_path=None, **kwargs):
    engine = onnx_reference_engine(fp16, fp32, "onnx-reference-fp16", "fp16")
    return run_diff(onnxruntime_runner(fp32, "fp32-reference"), [engine], SyntheticWindows(1, WINDOW), ATOL, RTOL,
                    report_dir=tmp_path, **kwargs)
