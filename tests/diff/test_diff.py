"""brr-diff: planted fp16 faults (``planted_nets``) are named at their node and stage; reports follow the schema."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from planted_nets import PLANTED, WINDOW, CosineNet, assert_origin_reads_finite_inputs, diff, export_pair

from brr.backends.onnxrt.runner import lean_onnxruntime_runner
from brr.diff import SyntheticWindows, validate, write_report
from brr.diff.engines import onnx_reference_engine
from brr.diff.localise import NodeLocaliser
from brr.diff.results import NodeRole
from brr.onnx.stages import node_stages


@pytest.fixture(scope="module")
def planted():
    return {name: export_pair(factory()) for name, (factory, _, _) in PLANTED.items()}


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
    assert (first.node, first.op_type, first.stage, first.kind) == (expected, op_type, stage, "precision")
    assert "fp16" in first.explanation and first.contaminated > 0
    assert_origin_reads_finite_inputs(first)
    assert first.roles.nodes[0].node == expected and first.roles.nodes[0].role is NodeRole.ORIGIN
    # Nothing earlier: every tensor made before it is finite in fp16.
    order = [n.name for n in fp32.graph.node]
    earlier = set(order[: order.index(expected)])
    ranges = list(engine.nodes.values())
    assert any(r.node in earlier for r in ranges)
    assert all(not r.engine_nonfinite_inputs for r in ranges if r.node in earlier)
    assert next(r for r in ranges if r.node == expected).engine_nonfinite_inputs == ["synthetic-0"]


def test_explanations_name_the_fp16_limit(planted):
    first = diff(*planted["cosine_norm"]).engines[0].origin
    assert first.cause == "overflow"
    assert first.explanation.startswith("overflow: Pow reaches 1.6e+05 in fp32, beyond fp16's largest finite 65504")
    first = diff(*planted["zero_degree"]).engines[0].origin
    assert first.cause == "underflow" and "smallest fp16 normal" in first.explanation


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
    assert found.first_divergent.node == first_float.name and found.first_divergent.stage == "tcn"
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
    # Exported without brr's wrapper: the module path is the net's own (CosineSimilarity's forward).
    assert document["engines"][0]["origin"]["module"] == {
        "path": "edge_stream", "class": "planted_nets.CosineSimilarity", "inherited_from": None}
    # The origin's fields in the order the report has always written them (the engine level adds the input).
    assert list(document["engines"][0]["origin"]) == [
        "node", "op_type", "stage", "tensor", "kind", "inputs", "output", "hidden_by", "hidden_by_count",
        "nonfinite_outputs", "contaminated", "cause", "explanation", "module", "roles", "input"]
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
