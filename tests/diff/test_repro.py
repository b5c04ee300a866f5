"""The repro bundle and ``brr-diff --check`` on the tiny planted nets (``planted_nets``) and handmade graphs.

The bundle of a v3-small engine, its Polygraphy lines and its check are in ``test_planted_faults``.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from planted_nets import WINDOW, CosineNet, export_pair

from brr.backends.onnxrt.runner import onnxruntime_runner
from brr.cli.diff import main as diff_main
from brr.diff import SyntheticWindows, run_diff
from brr.diff.engines import onnx_reference_engine, onnxruntime_engine
from brr.diff.repro import origin_subgraph

TIGHT = 1e-6  # no fp16 engine holds it: the clean net diverges


def _diff(fp32, fp16, tol: float, **kwargs):
    engine = onnx_reference_engine(fp16, fp32, "onnx-reference-fp16", "fp16")
    reference = onnxruntime_runner(fp32, "fp32-reference")
    return run_diff(reference, [engine], SyntheticWindows(1, WINDOW), tol, tol, **kwargs)


def test_check_judges_a_divergence_again_at_other_tolerances(tmp_path, capsys):
    """A divergence fails at a tolerance fp16 cannot hold: the bundle's outputs, judged again, give the same
    verdict and statistics at the same tolerance, and pass at a loose one."""
    fp32, fp16 = export_pair(CosineNet(scale=1.0))
    live = _diff(fp32, fp16, TIGHT, report_dir=tmp_path / "report", fail_on="divergence")
    assert live.verdict == "divergence" and live.failed and live.repro == str(tmp_path / "report" / "repro")
    assert diff_main(["--check", str(tmp_path / "report")]) == 1
    checked = json.loads((tmp_path / "report" / "check" / "report.json").read_text())
    assert checked["verdict"] == "divergence" and checked["fail_on"] == "divergence"
    assert checked["engines"][0]["stages"] == live.to_dict()["engines"][0]["stages"]
    assert diff_main(["--check", str(tmp_path / "report"), "--atol", "1e3", "--rtol", "1e3",
                      "--out", str(tmp_path / "loose")]) == 0
    loose = json.loads((tmp_path / "loose" / "report.json").read_text())
    assert loose["verdict"] == "clean" and loose["engines"][0]["atol"] == 1e3
    assert "## brr-diff: clean" in capsys.readouterr().out


def test_a_passing_diff_leaves_a_bundle_only_when_asked(tmp_path):
    fp32, fp16 = export_pair(CosineNet(scale=1.0))
    report = _diff(fp32, fp16, 1e-2, report_dir=tmp_path / "report")
    assert report.verdict == "clean" and report.repro is None and not (tmp_path / "report" / "repro").exists()
    report = _diff(fp32, fp16, 1e-2, repro_dir=tmp_path / "every", repro_every_input=True)
    bundle = json.loads((tmp_path / "every" / "bundle.json").read_text())
    assert bundle["every_input"] and [i["label"] for i in bundle["inputs"]] == ["synthetic-0"]
    assert "status=1" not in (tmp_path / "every" / "repro.sh").read_text()  # nothing failed: nothing to rerun


def test_check_of_a_folder_without_saved_results_names_it(tmp_path, capsys):
    assert diff_main(["--check", str(tmp_path)]) == 2
    error = capsys.readouterr().err
    assert f"{tmp_path}: no saved results to check" in error and "--save-repro" in error


def test_the_subgraph_of_a_node_with_a_body_takes_what_the_body_reads(tmp_path):
    """An If whose branch divides an outer-scope value by an outer-scope weight of zeros: the cut holds the If
    alone, the value it reads from around it becomes an input (recorded from the engine), the weight comes
    along, and ONNX Runtime gives the NaN again."""
    divide = helper.make_graph([helper.make_node("Div", ["square", "zeros"], ["quotient"])], "then", [],
                               [helper.make_tensor_value_info("quotient", TensorProto.FLOAT, [3])])
    keep = helper.make_graph([helper.make_node("Identity", ["square"], ["kept"])], "else", [],
                             [helper.make_tensor_value_info("kept", TensorProto.FLOAT, [3])])
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "x"], ["square"], name="square"),
         helper.make_node("If", ["flag"], ["y"], name="branch", then_branch=divide, else_branch=keep),
         helper.make_node("Add", ["y", "x"], ["out"], name="after")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3]),
         helper.make_tensor_value_info("flag", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [3])],
        initializer=[numpy_helper.from_array(np.zeros(3, np.float32), "zeros")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    feed = {"x": np.array([0.0, 1.0, 2.0], np.float32), "flag": np.array(True)}
    cut = origin_subgraph(onnxruntime_engine(model), "y", feed)
    assert [n.name for n in cut.model.graph.node] == ["branch"]
    assert sorted(cut.inputs) == ["flag", "square"] and cut.inputs["square"].tolist() == [0.0, 1.0, 4.0]
    assert [i.name for i in cut.model.graph.initializer] == ["zeros"]
    onnx.checker.check_model(cut.model)
    assert cut.reproduces()
