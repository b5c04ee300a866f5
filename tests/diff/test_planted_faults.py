"""A family of planted precision faults in v3-small, each named by brr-diff at its node and stage.

Each fault is a small pattern inserted after one tensor of the fp32 export, exact in fp32 (so the
exported graph still matches PyTorch, the diff's reference) and broken in the reduced precision:

- ``overflow``:     u = t * k (the planted node), y = u / k: beyond 65504 in fp16 when |t| k is.
- ``underflow_div``: d = (|t| + 1) * 1e-9, y = t * (d / d): 1e-9 flushes to 0 in fp16, 0/0 = NaN.
- ``exp_log``:      y = t + (log(exp(0 * t - 20)) + 20): exp(-20) = 2e-9 is 0 in fp16, log 0 = -inf.
- ``cancellation_div``: e = (0 * t + 1001) - 1000, y = t * (e / e): bf16 stores 1001 as 1000, so e = 0.

The engine is built from the planted fp32 graph by the exporter itself (ONNX Runtime, no precision
plan), and compared with PyTorch fp32. Guards on (the reference network: clamps and nan_to_num hide
the NaN before the logits) and off, fp16 and bf16, standard and plugin ops.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import helper, numpy_helper

from brr.cli.diff import main as diff_main
from brr.diff import SyntheticWindows, run_diff
from brr.backends import BACKENDS
from brr.artifact.manifest import write_manifest
from brr.artifact.files import ONNX_FILE, STAGES_FILE
from brr.export.onnx_export import OnnxExport, export_onnx
from brr.model import build_detector, save_checkpoint
from brr.onnx.stages import STAGE_METADATA_KEY
from brr.onnx.statistics import float_tensors

PATTERN_NODE = {"overflow": "planted_overflow", "underflow_div": "planted_div", "exp_log": "planted_log",
                "cancellation_div": "planted_div"}
PATTERN_CAUSE = {"overflow": "overflow", "underflow_div": "underflow", "exp_log": "underflow",
                 "cancellation_div": "cancellation"}


def _stage_tag(node: onnx.NodeProto, stage: str) -> onnx.NodeProto:
    node.metadata_props.add(key=STAGE_METADATA_KEY, value=stage)
    return node


def plant(model: onnx.ModelProto, tensor: str, pattern: str, stage: str, tag: str, scale: float = 1.0
          ) -> onnx.ModelProto:
    """A copy of ``model`` with ``pattern`` inserted after ``tensor`` (its consumers read the result)."""
    planted = onnx.ModelProto.FromString(model.SerializeToString())
    graph = planted.graph
    p = f"{tag}_"
    out = f"{p}out"
    constants = {"overflow": {"k": scale, "inverse_k": 1.0 / scale}, "underflow_div": {"one": 1.0, "tiny": 1e-9},
                 "exp_log": {"zero": 0.0, "twenty": 20.0}, "cancellation_div": {"zero": 0.0, "big": 1001.0,
                                                                               "offset": 1000.0}}[pattern]
    graph.initializer.extend(numpy_helper.from_array(np.array(v, np.float32), f"{p}{k}") for k, v in constants.items())
    make = {
        "overflow": [("Mul", [tensor, f"{p}k"], f"{p}up", "planted_overflow"),
                     ("Mul", [f"{p}up", f"{p}inverse_k"], out, "planted_overflow_back")],
        "underflow_div": [("Abs", [tensor], f"{p}abs", "planted_abs"), ("Add", [f"{p}abs", f"{p}one"], f"{p}pos", "planted_add"),
                          ("Mul", [f"{p}pos", f"{p}tiny"], f"{p}d", "planted_tiny"),
                          ("Div", [f"{p}d", f"{p}d"], f"{p}ratio", "planted_div"),
                          ("Mul", [tensor, f"{p}ratio"], out, "planted_apply")],
        "exp_log": [("Mul", [tensor, f"{p}zero"], f"{p}z", "planted_zero"), ("Sub", [f"{p}z", f"{p}twenty"], f"{p}neg", "planted_neg"),
                    ("Exp", [f"{p}neg"], f"{p}exp", "planted_exp"), ("Log", [f"{p}exp"], f"{p}log", "planted_log"),
                    ("Add", [f"{p}log", f"{p}twenty"], f"{p}zero_again", "planted_restore"),
                    ("Add", [tensor, f"{p}zero_again"], out, "planted_apply")],
        "cancellation_div": [("Mul", [tensor, f"{p}zero"], f"{p}z", "planted_zero"),
                             ("Add", [f"{p}z", f"{p}big"], f"{p}sum", "planted_add"),
                             ("Sub", [f"{p}sum", f"{p}offset"], f"{p}e", "planted_cancel"),
                             ("Div", [f"{p}e", f"{p}e"], f"{p}ratio", "planted_div"),
                             ("Mul", [tensor, f"{p}ratio"], out, "planted_apply")],
    }[pattern]
    new_nodes = [_stage_tag(helper.make_node(op, inputs, [output], name=f"{p}{name}"), stage)
                 for op, inputs, output, name in make]
    nodes = list(graph.node)
    for node in nodes:
        node.input[:] = [out if name == tensor else name for name in node.input]
    at = next(i for i, n in enumerate(nodes) if tensor in n.output) + 1
    del graph.node[:]
    graph.node.extend(nodes[:at] + new_nodes + nodes[at:])
    onnx.checker.check_model(planted)
    return planted


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """(guards, ops) -> (model, checkpoint, fp32 export) for the configurations the cases use."""
    out = {}
    root = tmp_path_factory.mktemp("planted")
    for guards, ops in ((True, "standard"), (False, "standard"), (True, "plugin")):
        torch.manual_seed(1)
        model = build_detector("v3-small", guards=guards).eval()
        name = f"{'guarded' if guards else 'raw'}-{ops}"
        checkpoint = save_checkpoint(model, root / name / "checkpoint")
        out[guards, ops] = (model, checkpoint, export_onnx(model, root / name / f"onnx-{ops}", ops))
    return out


def _tensor(export: OnnxExport, stage: str, op_type: str, last: bool = False) -> str:
    stages = json.loads(export.stages.read_text())
    model = onnx.load(str(export.model))
    floats = set(float_tensors(model))
    consumed = {name for n in model.graph.node for name in n.input}
    found = [next(o for o in n.output if o in consumed) for n in model.graph.node
             if stages[n.name] == stage and n.op_type == op_type and n.output[0] in floats]
    return found[-1 if last else 0]


def build_planted_engine(directory: Path, model, export: OnnxExport, plants: list[tuple[str, str, str, float]],
                         precision: str) -> Path:
    """The planted fp32 artifact and the ``precision`` ONNX Runtime engine the exporter builds from it."""
    fp32 = onnx.load(str(export.model))
    for index, (tensor, pattern, stage, scale) in enumerate(plants):
        fp32 = plant(fp32, tensor, pattern, stage, f"fault{index}", scale)
    reference_dir = directory / f"onnx-{export.ops}"
    reference_dir.mkdir(parents=True)
    onnx.save(fp32, str(reference_dir / ONNX_FILE))
    stages = json.loads(export.stages.read_text()) | {n.name: next(p.value for p in n.metadata_props)
                                                        for n in fp32.graph.node if n.name.startswith("fault")}
    (reference_dir / STAGES_FILE).write_text(json.dumps(stages))
    common = {"source": {}, "config": model.config, "ops": export.ops, "opset": export.opset}
    write_manifest(reference_dir, backend="onnxruntime", precision="fp32", model_file=ONNX_FILE, pinned_nodes=[],
                   **common)
    engine_dir = directory / f"onnxruntime-{precision}-{export.ops}"
    built = BACKENDS["onnxruntime"].build(reference_dir / ONNX_FILE, export.ops, engine_dir, precision, [], (1, 1, 1),
                                          model.config, None)
    write_manifest(engine_dir, backend="onnxruntime", precision=precision, model_file=built.model_file,
                   pinned_nodes=[], fp32_reference=reference_dir, **common)
    return engine_dir


CASES = [
    # (stage, op type of the tensor planted after, pattern, precision, guards, ops)
    ("tcn", "Relu", "overflow", "fp16", True, "standard"),
    ("electrodes", "Conv", "underflow_div", "fp16", True, "standard"),
    ("node_stream", "MatMul", "overflow", "fp16", False, "standard"),
    ("edge_similarity", "Sqrt", "underflow_div", "fp16", True, "standard"),
    ("edge_weights", "Softplus", "exp_log", "fp16", False, "standard"),
    ("laplacian_pe", "Reciprocal", "overflow", "fp16", True, "standard"),
    ("laplacian_pe", "Loop", "underflow_div", "fp16", True, "standard"),
    ("laplacian_pe", "SymmetricEigh", "exp_log", "fp16", True, "plugin"),
    ("node_stream", "SelectiveScan", "overflow", "fp16", True, "plugin"),
    ("logits", "Conv", "overflow", "fp16", False, "standard"),
    ("tcn", "Relu", "cancellation_div", "bf16", True, "standard"),
    ("edge_weights", "Softplus", "cancellation_div", "bf16", False, "standard"),
]


@pytest.mark.parametrize("stage, op_type, pattern, precision, guards, ops", CASES,
                         ids=[f"{c[0]}-{c[1]}-{c[2]}-{c[3]}-{'guarded' if c[4] else 'raw'}-{c[5]}" for c in CASES])
def test_planted_fault_is_named_at_its_node_and_stage(exports, tmp_path, stage, op_type, pattern, precision,
                                                      guards, ops):
    model, _, export = exports[guards, ops]
    tensor = _tensor(export, stage, op_type, last=op_type == "Softplus")  # the last Softplus: edge projection
    engine = build_planted_engine(tmp_path, model, export, [(tensor, pattern, stage, 1e7)], precision)
    report = run_diff(model, [engine], SyntheticWindows(1, model.config.window_samples))
    result = report.engines[0]
    assert result.verdict == "nonfinite_precision" and report.failed
    (origin,) = result.origins  # the planted node, and nothing earlier
    assert origin.node == f"fault0_{PATTERN_NODE[pattern]}" and origin.stage == stage
    assert origin.cause == PATTERN_CAUSE[pattern] and precision in origin.explanation
    assert result.inputs[0].node_level.reproduced is True
    ranges = list(result.nodes.values())  # every compared tensor, in topological order
    planted_at = next(i for i, r in enumerate(ranges) if r.node == origin.node)
    assert ranges[planted_at].engine_nonfinite_inputs and not any(r.engine_nonfinite_inputs for r in ranges[:planted_at])
    if guards and "logits" not in origin.nonfinite_outputs:
        # The guards sanitised it before the logits: the report must say which node hid it.
        assert origin.hidden_by, origin


def test_two_independent_faults_are_both_named(exports, tmp_path):
    """Two faults on branches that do not feed each other (the node stream and the edge stream's
    similarity both start from the electrode features): each is an origin of its own, both described
    from one marked run pair (two statistics runs, then one fp32 and one engine run)."""
    model, _, export = exports[True, "standard"]
    plants = [(_tensor(export, "node_stream", "MatMul"), "overflow", "node_stream", 1e7),
              (_tensor(export, "edge_similarity", "Sqrt"), "underflow_div", "edge_similarity", 1.0)]
    engine = build_planted_engine(tmp_path, model, export, plants, "fp16")
    report = run_diff(model, [engine], SyntheticWindows(1, model.config.window_samples))
    origins = {o.node: o.stage for o in report.engines[0].origins}
    assert origins == {"fault0_planted_overflow": "node_stream", "fault1_planted_div": "edge_similarity"}
    assert report.engines[0].inputs[0].node_level.runs == 4


def test_a_fault_of_another_precision_is_not_reported(exports, tmp_path):
    """fp16's overflow is nothing in bf16 (fp32's range): the bf16 engine names no origin."""
    model, _, export = exports[True, "standard"]
    engine = build_planted_engine(tmp_path, model, export, [(_tensor(export, "tcn", "Relu"), "overflow", "tcn", 1e7)],
                                  "bf16")
    report = run_diff(model, [engine], SyntheticWindows(1, model.config.window_samples))
    assert report.engines[0].origins == [] and report.verdict not in ("nonfinite_precision", "nonfinite_fp32")


def test_command_line_exit_code_and_report_lead_with_the_origin(exports, tmp_path, capsys):
    """brr-diff on the engine folder alone: the fp32 graph comes from its manifest; exit 1; the report's
    first finding is the planted node, and the next step is the calibration command."""
    model, checkpoint, export = exports[True, "standard"]
    engine = build_planted_engine(tmp_path / "artifacts", model, export,
                                  [(_tensor(export, "edge_similarity", "Sqrt"), "underflow_div", "edge_similarity",
                                    1.0)], "fp16")
    code = diff_main([str(checkpoint), str(engine), "--synthetic", "1", "--no-adversarial",
                      "--out", str(tmp_path / "report")])
    assert code == 1
    markdown = (tmp_path / "report" / "report.md").read_text().splitlines()
    assert markdown[0] == "## brr-diff: nonfinite_precision"
    assert "fp16 underflow at `fault0_planted_div` (Div, stage `edge_similarity`)" in markdown[2]
    assert any(line.startswith("brr-calibrate ") and "--precision fp16" in line for line in markdown)
    assert "node level skipped" not in "\n".join(markdown)


@pytest.mark.slow
def test_v3_planted_overflow_is_named(tmp_path):
    torch.manual_seed(1)
    model = build_detector("v3").eval()
    export = export_onnx(model, tmp_path / "export", "standard")
    tensor = _tensor(export, "node_stream", "MatMul")
    engine = build_planted_engine(tmp_path / "planted", model, export, [(tensor, "overflow", "node_stream", 1e7)],
                                  "fp16")
    report = run_diff(model, [engine], SyntheticWindows(1, model.config.window_samples))
    (origin,) = report.engines[0].origins
    assert origin.node == "fault0_planted_overflow" and origin.stage == "node_stream"
    shutil.rmtree(tmp_path)
