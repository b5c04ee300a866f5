"""Tiny detectors with one planted fp16 hazard each, and their fp32/fp16 ONNX pair, for the diff's tests.

Module names follow ``V3Detector`` (tcn, edge_stream, positional_encoding, head) so that
``brr.onnx.stages.node_stages`` maps their nodes to probe stages. The fp16 graph is converted with
fp32 inputs and outputs (keep_io_types); ``diff`` runs it on ONNX's reference evaluator, which rounds
every node's output to fp16 (ONNX Runtime's CPU provider would compute most of these nodes in fp32 and
hide the hazards).

Two hand-built graphs plant what only a rounding engine (``brr.onnx.precision``: fp32 kernels, fp16
storage) shows, run by ``rounding_diff`` on ONNX Runtime as brr-export's fp16 engine is:
``stored_overflow_model``, a finite fp32 result beyond fp16's range that is stored in fp16 only for its
consumer (a pinned node's result, or a probe), and ``lost_digits_model``, (x + 2048) - 2048, whose Sub
turns fp16's rounding of the sum into an error as large as x.
"""

from __future__ import annotations

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.transformers.float16 import convert_float_to_float16
from torch import nn

from brr.backends.onnxrt.runner import onnxruntime_runner
from brr.diff import SyntheticWindows, run_diff
from brr.diff.engines import onnx_reference_engine, onnxruntime_engine
from brr.diff.results import Cause, NonfiniteOrigin
from brr.onnx.precision import low_precision_model
from brr.onnx.stages import STAGE_METADATA_KEY

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


ROUNDED_SAMPLES = 128


def _rounded_model(name: str, nodes: list[onnx.NodeProto], weights: dict[str, float], probes: list[str]
                   ) -> onnx.ModelProto:
    """``eeg`` (1, 19, ROUNDED_SAMPLES) -> ``nodes`` -> ``logits`` (1, 19 ROUNDED_SAMPLES) and ``probes`` (of the
    window's shape), every node of stage logits."""
    for node in nodes:
        node.metadata_props.add(key=STAGE_METADATA_KEY, value="logits")
    window = [1, 19, ROUNDED_SAMPLES]
    outputs = [*(helper.make_tensor_value_info(n, TensorProto.FLOAT, window) for n in probes),
               helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 19 * ROUNDED_SAMPLES])]
    graph = helper.make_graph(
        nodes, name, [helper.make_tensor_value_info("eeg", TensorProto.FLOAT, window)], outputs,
        [numpy_helper.from_array(np.array(v, np.float32), k) for k, v in weights.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    onnx.checker.check_model(model, full_check=True)
    return model


def stored_overflow_model(probe: bool) -> onnx.ModelProto:
    """``square`` makes up to ~1e6 from inputs well inside fp16 (300 |eeg|, squared): finite in fp32, where a
    rounding engine computes it when ``square`` is pinned or its result is a probe (``probe``), and inf once
    stored in fp16 for ``shrink``, which reads it."""
    return _rounded_model("stored_overflow", [
        helper.make_node("Mul", ["eeg", "gain"], ["amplified"], name="amplify"),
        helper.make_node("Mul", ["amplified", "amplified"], ["squared"], name="square"),
        helper.make_node("Mul", ["squared", "shrink_by"], ["shrunk"], name="shrink"),
        helper.make_node("Relu", ["shrunk"], ["rectified"], name="rectify"),
        helper.make_node("Flatten", ["rectified"], ["logits"], name="flatten", axis=1),
    ], {"gain": 300.0, "shrink_by": 1e-3}, ["squared"] if probe else [])


def lost_digits_model() -> onnx.ModelProto:
    """(x + 2048) - 2048: fp16 stores the sum at a spacing of 2, so ``unshift`` returns x off by up to 1, far
    beyond tolerance for |x| ~ 1, while ``shift``'s own error is small against 2048."""
    return _rounded_model("lost_digits", [
        helper.make_node("Add", ["eeg", "offset"], ["shifted"], name="shift"),
        helper.make_node("Sub", ["shifted", "offset"], ["unshifted"], name="unshift"),
        helper.make_node("Mul", ["unshifted", "half"], ["halved"], name="halve"),
        helper.make_node("Flatten", ["halved"], ["logits"], name="flatten", axis=1),
    ], {"offset": 2048.0, "half": 0.5}, [])


def rounding_diff(fp32: onnx.ModelProto, pinned: list[str], tmp_path=None, **kwargs):
    """run_diff of brr-export's fp16 ONNX Runtime engine of ``fp32`` (``pinned`` nodes kept in fp32) on one
    seeded window, at fp16's tolerance."""
    engine = onnxruntime_engine(low_precision_model(fp32, pinned, "fp16"), fp32, "onnxruntime-fp16", "fp16")
    window = {"eeg": np.random.default_rng(0).standard_normal((1, 19, ROUNDED_SAMPLES)).astype(np.float32)}
    return run_diff(onnxruntime_runner(fp32, "fp32-reference"), [engine], [window], report_dir=tmp_path, **kwargs)


def assert_origin_reads_finite_inputs(origin: NonfiniteOrigin) -> None:
    """An origin never contradicts its own table: every input a node makes is finite in the engine. Only a
    weight or graph input (no node makes it) may be non-finite there, stored beyond the precision's range,
    and the origin then says so."""
    for entry in origin.inputs:
        if entry.engine is None or not entry.engine.nonfinite:
            continue
        assert entry.producer is None, (origin.node, entry)
        assert origin.cause == Cause.OVERFLOW_WHEN_STORED and entry.name in origin.explanation, origin
