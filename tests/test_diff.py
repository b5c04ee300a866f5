"""brr-diff: planted fp16 faults are named at their node and stage, reports follow the schema.

Tiny detectors with one planted fp16 hazard each, exported to ONNX and converted to fp16
(keep_io_types). Module names follow ``V3Detector`` (tcn, edge_stream, positional_encoding, head)
so that ``brr.onnx.stages.node_stages`` maps their nodes to probe stages. The fp16 engine is ONNX's
reference evaluator, which rounds every node's output to fp16 (ONNX Runtime's CPU provider would
compute most of these nodes in fp32 and hide the hazards).
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import onnx
import pytest
import torch
from onnxruntime.transformers.float16 import convert_float_to_float16
from torch import nn

from brr.diff import SyntheticWindows, run_diff, validate, write_report
from brr.backends.onnxrt.runner import lean_onnxruntime_runner, onnxruntime_runner
from brr.diff.engines import onnx_reference_engine
from brr.diff.localise import NodeLocaliser
from brr.onnx.stages import node_stages

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


@pytest.fixture(scope="module")
def planted():
    return {name: export_pair(factory()) for name, (factory, _, _) in PLANTED.items()}


def diff(fp32, fp16, tmp_path=None, **kwargs):
    engine = onnx_reference_engine(fp16, fp32, "onnx-reference-fp16", "fp16")
    return run_diff(onnxruntime_runner(fp32, "fp32-reference"), [engine], SyntheticWindows(1, WINDOW), ATOL, RTOL,
                    report_dir=tmp_path, **kwargs)


@pytest.mark.parametrize("name", sorted(PLANTED))
def test_planted_fault_is_named_at_its_node_and_stage(planted, name):
    fp32, fp16 = planted[name]
    _, op_type, stage = PLANTED[name]
    report = diff(fp32, fp16)
    engine = report.engines[0]
    assert engine.verdict == "nonfinite_precision"
    level = engine.inputs[0].node_level
    assert level.method == "statistics" and level.reproduced is True
    first = level.first_nonfinite
    (expected,) = [n.name for n in fp32.graph.node if n.op_type == op_type]
    assert (first["node"], first["op_type"], first["stage"], first["kind"]) == (expected, op_type, stage, "precision")
    assert "fp16" in first["explanation"] and first["contaminated"] > 0
    # Nothing earlier: every tensor made before it is finite in fp16.
    order = [n.name for n in fp32.graph.node]
    earlier = set(order[: order.index(expected)])
    ranges = list(engine.nodes.values())
    assert any(r.node in earlier for r in ranges)
    assert all(not r.engine_nonfinite_inputs for r in ranges if r.node in earlier)
    assert next(r for r in ranges if r.node == expected).engine_nonfinite_inputs == ["synthetic-0"]


def test_explanations_name_the_fp16_limit(planted):
    first = diff(*planted["cosine_norm"]).engines[0].origin
    assert first["cause"] == "overflow"
    assert first["explanation"].startswith("overflow: Pow reaches 1.6e+05 in fp32, beyond fp16's largest finite 65504")
    first = diff(*planted["zero_degree"]).engines[0].origin
    assert first["cause"] == "underflow" and "smallest fp16 normal" in first["explanation"]


def test_clean_model_gives_clean_report():
    fp32, fp16 = export_pair(CosineNet(scale=1.0))
    report = diff(fp32, fp16)
    assert report.verdict == "clean" and not report.failed
    level = report.engines[0].inputs[0].node_level  # every input is scanned for hidden non-finite values
    assert level.method == "statistics" and level.first_nonfinite is None and level.reproduced is True
    assert report.next_steps() == [] and report.engines[0].origins == []


def test_bisection_names_the_first_node_beyond_tolerance():
    """On a clean fp16 model at a tolerance fp16 cannot hold, the first rounded tensor is the culprit."""
    fp32, fp16 = export_pair(CosineNet(scale=1.0))
    engine = onnx_reference_engine(fp16, fp32, "onnx-reference-fp16", "fp16")
    feed = next(iter(SyntheticWindows(1, WINDOW)))
    localiser = NodeLocaliser(engine, lean_onnxruntime_runner)
    found = localiser.first_divergent(feed, None, 1e-7, 1e-7)
    first_float = next(n for n in fp32.graph.node if n.op_type == "Conv")
    assert found.first_divergent["node"] == first_float.name and found.first_divergent["stage"] == "tcn"
    # log2 bisection over the tensors, two runs (fp32, engine) per step
    steps = int(np.ceil(np.log2(len(localiser.tensors)))) + 1
    assert found.runs <= 2 * steps
    clean = localiser.first_divergent(feed, "edge_similarity", 1.0, 1.0)
    assert clean.first_divergent is None and "fp32 export itself" in clean.note


def test_report_files_follow_the_schema(planted, tmp_path):
    report = diff(*planted["cosine_norm"], tmp_path=tmp_path)
    document = json.loads((tmp_path / "report.json").read_text())
    validate(document)
    assert document["engines"][0]["inputs"][0]["node_level"]["first_nonfinite"]["op_type"] == "Pow"
    assert document["engines"][0]["origin"]["op_type"] == "Pow"
    assert "Pow" in (tmp_path / "report.md").read_text()
    assert (tmp_path / "error_per_stage.png").stat().st_size > 1000 and (tmp_path / "report.html").is_file()
    broken = dict(document, verdict="fine")
    with pytest.raises(Exception, match="fine"):
        validate(broken)
    assert write_report(report, tmp_path / "again")["json"].is_file()


def test_report_holds_statistics_only(planted):
    report = diff(*planted["softplus_exp"])

    def arrays(value, depth=0):
        if isinstance(value, (np.ndarray, torch.Tensor)):
            yield value
        elif dataclasses.is_dataclass(value):
            for f in dataclasses.fields(value):
                yield from arrays(getattr(value, f.name), depth + 1)
        elif isinstance(value, dict):
            for v in value.values():
                yield from arrays(v, depth + 1)
        elif isinstance(value, (list, tuple)):
            for v in value:
                yield from arrays(v, depth + 1)

    assert list(arrays(report)) == []
    assert len(json.dumps(report.to_dict())) < 200_000


def test_stage_map_splits_the_edge_stream(planted):
    fp32, _ = planted["softplus_exp"]
    stages = node_stages(fp32)
    assert stages[next(n.name for n in fp32.graph.node if n.op_type == "Exp")] == "edge_weights"
    assert stages[next(n.name for n in fp32.graph.node if n.op_type == "Conv")] == "tcn"
    assert stages[next(n.name for n in fp32.graph.node if n.op_type == "Pow")] == "laplacian_pe"
