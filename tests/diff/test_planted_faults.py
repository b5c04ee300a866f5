"""A family of planted precision faults in v3-small, each named by brr-diff at its node and stage.

Each fault is a small pattern inserted after one tensor of the fp32 export, exact in fp32 (so the
exported graph still matches PyTorch, the diff's reference) and broken in the reduced precision:

- ``overflow``:     u = t * k (the planted node), y = u / k: beyond 65504 in fp16 when |t| k is. With
  k = 1e7 the weight itself is beyond fp16: brr-export's engine stores it as inf, so the Mul (which no node
  feeds that weight) is named with overflow when stored.
- ``underflow_div``: d = (|t| + 1) * 1e-9, y = t * (d / d): 1e-9 flushes to 0 in fp16, 0/0 = NaN.
- ``exp_log``:      y = t + (log(exp(0 * t - 20)) + 20): exp(-20) = 2e-9 is 0 in fp16, log 0 = -inf.
- ``cancellation_div``: e = (0 * t + 1001) - 1000, y = t * (e / e): bf16 stores 1001 as 1000, so e = 0.

The engine is built from the planted fp32 graph by the exporter itself (ONNX Runtime, no precision
plan), and compared with PyTorch fp32. Guards on (the reference network: clamps and nan_to_num hide
the NaN before the logits) and off, fp16 and bf16, standard and plugin ops. Every origin reads finite
inputs in its own table, and replayed alone it makes the error (origin), except the Div after a
cancellation, which only turns the error made upstream non-finite (propagator).

Two hand-built graphs (``planted_nets``) plant what v3-small does not hold: a finite fp32 result that
overflows only where it is stored for its reader, and a divergence made by one node and carried by the
next.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import helper, numpy_helper
from planted_nets import (
    assert_origin_reads_finite_inputs,
    lost_digits_model,
    rounding_diff,
    stored_overflow_model,
)
from polygraphy.json import load_json

from brr.artifact.files import ONNX_FILE, STAGES_FILE
from brr.artifact.manifest import write_manifest
from brr.backends import BACKENDS
from brr.cli.diff import main as diff_main
from brr.diff import SyntheticWindows, run_diff
from brr.diff.results import NodeRole
from brr.export.onnx_export import OnnxExport, export_onnx
from brr.model import build_detector, save_checkpoint
from brr.onnx.precision import low_precision_model
from brr.onnx.source import module_sources
from brr.onnx.stages import STAGE_METADATA_KEY
from brr.onnx.statistics import float_tensors

PATTERN_NODE = {"overflow": "planted_overflow", "underflow_div": "planted_div", "exp_log": "planted_log",
                "cancellation_div": "planted_div"}
PATTERN_CAUSE = {"overflow": "overflow when stored", "underflow_div": "underflow", "exp_log": "underflow",
                 "cancellation_div": "cancellation"}
# The planted node run alone on fp32's inputs: it makes the error, but for the Div after a cancellation,
# whose inputs are exact there (the digits were lost upstream, in the Add's stored sum).
PATTERN_ROLE = {"overflow": NodeRole.ORIGIN, "underflow_div": NodeRole.ORIGIN, "exp_log": NodeRole.ORIGIN,
                "cancellation_div": NodeRole.PROPAGATOR}


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


@pytest.mark.parametrize("probe", [False, True], ids=["pinned", "probe"])
def test_an_overflow_when_stored_is_named_at_its_producer(tmp_path, probe):
    """A finite fp32 result beyond fp16's range, stored in fp16 only for the node reading it (a pinned node's
    result, or a probe): named where it is made, not at the reader, whose own input table would show the inf
    it reads. Replayed alone, the producer makes the inf; the reader, the nodes after it, only carry it."""
    report = rounding_diff(stored_overflow_model(probe), [] if probe else ["square"], tmp_path)
    result = report.engines[0]
    assert result.verdict == "nonfinite_precision"
    (origin,) = result.origins
    assert (origin.node, origin.tensor, origin.cause) == ("square", "squared", "overflow when stored")
    assert_origin_reads_finite_inputs(origin)
    before, stored = origin.output.engine_before_storing, origin.output.engine
    assert before.nonfinite == 0 and before.abs_max > 65504 and stored.nonfinite == origin.output.precision_nonfinite
    assert stored.nonfinite > 0 and origin.explanation.startswith("overflow when stored: Mul computes up to")
    assert origin.output.read_as == "squared_fp16"  # the copy stored for shrink
    # The repro bundle cuts out that store: alone on ONNX Runtime, it makes the inf again.
    bundle = json.loads((tmp_path / "repro" / "bundle.json").read_text())
    assert bundle["engines"][0]["origin"]["reproduced_on_onnxruntime"] is True
    roles = origin.roles
    assert (roles.nodes[0].node, roles.nodes[0].role) == ("square", NodeRole.ORIGIN)
    if probe:  # the stored value is itself a probe, as the engine computes it (in fp32)
        assert roles.probe == "squared" and len(roles.nodes) == 1
    else:
        assert [n.node for n in roles.nodes] == ["square", "shrink", "rectify", "flatten"] and roles.probe == "logits"
        assert all(n.role is NodeRole.PROPAGATOR for n in roles.nodes[1:])
        assert roles.nodes[1].inputs_nonfinite == stored.nonfinite  # what shrink reads: the store's inf
    markdown = (tmp_path / "report.md").read_text()
    assert "fp16 overflow when stored at `square` (Mul, stage `logits`)" in markdown
    assert "\n  - `square` (Mul): origin, own max abs error" in markdown


def test_a_divergence_is_traced_to_the_node_that_makes_it(tmp_path):
    """(x + 2048) - 2048 in fp16: bisection names the Sub, the first tensor beyond tolerance; run alone on
    fp32's inputs stored as the engine stores them, it makes the error, and the nodes after it only carry it.
    The report lists them under the node (JSON, Markdown, HTML)."""
    report = rounding_diff(lost_digits_model(), [], tmp_path)
    result = report.engines[0]
    assert result.verdict == "divergence" and result.origins == []
    node = result.first_divergent_node
    assert node.node == "unshift"
    roles = node.roles
    assert [(n.node, n.role) for n in roles.nodes] == [
        ("unshift", NodeRole.ORIGIN), ("halve", NodeRole.PROPAGATOR), ("flatten", NodeRole.PROPAGATOR)]
    assert roles.nodes[0].own_error > roles.atol > roles.nodes[1].own_error
    assert roles.probe == "logits" and roles.path_length == 3 and roles.note is None
    document = json.loads((tmp_path / "report.json").read_text())
    listed = document["engines"][0]["first_divergent_node"]["roles"]["nodes"]
    assert [(n["node"], n["role"]) for n in listed] == [("unshift", "origin"), ("halve", "propagator"),
                                                       ("flatten", "propagator")]
    markdown = (tmp_path / "report.md").read_text().splitlines()
    at = markdown.index(next(line for line in markdown if "origin or propagator from `unshift`" in line))
    assert "to the `logits` probe, each node run alone in fp16 on fp32's inputs" in markdown[at]
    assert markdown[at + 1].startswith("  - `unshift` (Sub): origin, own max abs error")
    assert markdown[at + 2].startswith("  - `halve` (Mul): propagator, own max abs error")
    html = (tmp_path / "report.html").read_text()
    assert '<table class="roles"' in html and '<span class="pill bad">origin</span>' in html


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
    assert_origin_reads_finite_inputs(origin)
    assert origin.roles.nodes[0].node == origin.node and origin.roles.nodes[0].role is PATTERN_ROLE[pattern]
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
    for origin in report.engines[0].origins:
        assert_origin_reads_finite_inputs(origin)
        assert origin.roles.nodes[0].role is NodeRole.ORIGIN
    # Then one fp32 run marking the inputs of both paths to a probe, and one run per node replayed alone.
    replayed = sum(node.role is not None for o in report.engines[0].origins for node in o.roles.nodes)
    assert report.engines[0].inputs[0].node_level.runs == 4 + 1 + replayed


def test_a_fault_of_another_precision_is_not_reported(exports, tmp_path):
    """fp16's overflow is nothing in bf16 (fp32's range): the bf16 engine names no origin."""
    model, _, export = exports[True, "standard"]
    engine = build_planted_engine(tmp_path, model, export, [(_tensor(export, "tcn", "Relu"), "overflow", "tcn", 1e7)],
                                  "bf16")
    report = run_diff(model, [engine], SyntheticWindows(1, model.config.window_samples))
    assert report.engines[0].origins == [] and report.verdict not in ("nonfinite_precision", "nonfinite_fp32")


@pytest.fixture(scope="module")
def failing_cli_run(exports, tmp_path_factory):
    """brr-diff on the engine folder alone, one planted fault (underflow after the edge stream's Sqrt), run
    once for the tests that read its report and repro bundle: (exit status, report folder, tensor planted
    after)."""
    model, checkpoint, export = exports[True, "standard"]
    root = tmp_path_factory.mktemp("cli")
    tensor = _tensor(export, "edge_similarity", "Sqrt")
    engine = build_planted_engine(root / "artifacts", model, export,
                                  [(tensor, "underflow_div", "edge_similarity", 1.0)], "fp16")
    code = diff_main([str(checkpoint), str(engine), "--synthetic", "1", "--no-adversarial",
                      "--out", str(root / "report")])
    return code, root / "report", tensor


def test_command_line_exit_code_and_report_lead_with_the_origin(failing_cli_run):
    """The fp32 graph comes from the engine's manifest; exit 1; the report's first finding is the planted
    node, and the next step is the calibration command."""
    code, report, _ = failing_cli_run
    assert code == 1
    markdown = (report / "report.md").read_text().splitlines()
    assert markdown[0] == "## brr-diff: nonfinite_precision"
    assert "fp16 underflow at `fault0_planted_div` (Div, stage `edge_similarity`)" in markdown[2]
    assert any(line.startswith("brr-calibrate ") and "--precision fp16" in line for line in markdown)
    assert "node level skipped" not in "\n".join(markdown)


def test_the_origin_names_the_module_the_fault_was_planted_in(exports, failing_cli_run):
    """The planted nodes carry no module of their own: they take that of the node whose output they were
    planted on, the edge stream's Sqrt, which ``get_submodule`` resolves on the detector."""
    model, _, export = exports[True, "standard"]
    _, report, tensor = failing_cli_run
    module = json.loads((report / "report.json").read_text())["engines"][0]["origin"]["module"]
    planted_on = next(n for n in onnx.load(str(export.model)).graph.node if tensor in n.output)
    assert module["inherited_from"] == planted_on.name
    found = model.get_submodule(module["path"])
    assert found is model.edge_stream
    assert f"{type(found).__module__}.{type(found).__qualname__}" == module["class"]
    named = f"in module `edge_stream` (EdgeStream; inherited from `{planted_on.name}`)"
    assert named in (report / "report.md").read_text().splitlines()[2]
    html = (report / "report.html").read_text()
    assert f"<code>edge_stream</code> (EdgeStream; inherited from <code>{planted_on.name}</code>)" in html


def test_every_node_maps_to_the_module_it_was_traced_in(exports):
    """Every node of the fp32 export (custom nodes too) resolves to a module of the detector of the recorded
    class; in the fp16 engine, every Cast the rounding adds takes the module of the node it stores."""
    model, _, export = exports[True, "plugin"]
    fp32 = onnx.load(str(export.model))
    sources = module_sources(fp32)
    assert set(sources) == {n.name for n in fp32.graph.node}
    for source in sources.values():
        found = model.get_submodule(source.path)
        assert f"{type(found).__module__}.{type(found).__qualname__}" == source.class_name
    scans = [sources[n.name].path for n in fp32.graph.node if n.op_type == "SelectiveScan"]
    assert scans and all(p.endswith(("forward_mamba", "backward_mamba")) for p in scans)
    fp32 = onnx.load(str(exports[True, "standard"][2].model))
    fp32_sources, fp32_ops = module_sources(fp32), {n.name: n.op_type for n in fp32.graph.node}
    engine = low_precision_model(fp32, [], "fp16")
    rounded = module_sources(engine)
    # A node's result is stored by a Cast that takes the node's name (the node becomes <name>_unrounded).
    stored = [n.name for n in engine.graph.node
              if n.op_type == "Cast" and fp32_ops.get(n.name, "Cast") != "Cast"]
    assert len(rounded) == len(engine.graph.node) and len(stored) > 100
    assert all(rounded[name] == dataclasses.replace(fp32_sources[name], inherited_from=f"{name}_unrounded")
               for name in stored)


def test_a_failing_diff_leaves_a_bundle_polygraphy_reproduces(failing_cli_run):
    """repro/ holds the failing input (numpy and Polygraphy), every runner's outputs, the origin node cut out
    with its inputs' values; its Polygraphy line fails on the NaN, as does the whole engine's."""
    _, report, _ = failing_cli_run
    bundle = report / "repro"
    with np.load(bundle / "inputs" / "0000000000.npz") as feed:
        assert feed.files == ["eeg"] and feed["eeg"].shape == (1, 19, 15360)
    assert json.loads((bundle / "bundle.json").read_text())["inputs"][0]["label"] == "synthetic-0"
    assert {p.name for p in (bundle / "results").iterdir()} == {"reference", "onnxruntime-fp16-standard"}
    subgraph = onnx.load(str(bundle / "onnxruntime-fp16-standard" / "subgraph.onnx"))
    assert "Div" in [n.op_type for n in subgraph.graph.node] and len(subgraph.graph.node) <= 3
    boundary = load_json(str(bundle / "onnxruntime-fp16-standard" / "boundary_inputs.json"))
    assert list(boundary[0]) == [i.name for i in subgraph.graph.input]
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    ran = subprocess.run(["sh", "repro.sh"], cwd=bundle, env=env, capture_output=True, text=True, timeout=120,
                         check=False)
    shown = ran.stdout + ran.stderr
    assert ran.returncode == 1 and "polygraphy run onnxruntime-fp16-standard/subgraph.onnx --onnxrt" in shown
    assert "NaN Detected" in shown and "Output validation failed" in shown
    whole = json.loads((bundle / "bundle.json").read_text())["engines"][0]["whole_model"]
    ran = subprocess.run(shlex.split(whole), cwd=bundle, env=env, capture_output=True, text=True, timeout=120,
                         check=False)
    assert ran.returncode != 0 and "NaN Detected" in ran.stdout + ran.stderr


def test_check_judges_the_saved_outputs_as_the_live_run_did(failing_cli_run, capsys):
    """Offline, from the bundle alone: the same verdicts, statistics and exit status."""
    code, report, _ = failing_cli_run
    assert diff_main(["--check", str(report)]) == code
    live = json.loads((report / "report.json").read_text())
    checked = json.loads((report / "check" / "report.json").read_text())
    assert checked["verdict"] == live["verdict"] == "nonfinite_precision"
    assert checked["rejudged"] == {"bundle": str(report / "repro"), "inputs": 1, "live_inputs": 1}
    assert checked["engines"][0]["stages"] == live["engines"][0]["stages"]
    verdicts = [[i["verdict"] for i in document["engines"][0]["inputs"]] for document in (checked, live)]
    assert verdicts[0] == verdicts[1]
    assert "node level was not rerun" in capsys.readouterr().out


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
    assert_origin_reads_finite_inputs(origin)
    shutil.rmtree(tmp_path)
