"""brr-calibrate: planted fp16 overflows are pinned (and nothing else), plans are checked, INT8 runs.

The planted model is a hand-built ONNX graph in the detector's I/O contract (``eeg`` (B, 19, W) ->
``logits``): a cosine-style normalisation whose squared norm overflows fp16 (``ReduceSumSquare`` of
300 x the input: ~6e6 > 65504), between two MatMuls that fp16 handles well. The search judges fp16
by rounding every node output through fp16 in ONNX Runtime; its plans are confirmed on the real fp16
model run by ONNX's reference evaluator (true fp16 per node).
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from brr.calibration import EdfBatches, PlanSearch, calibrate, node_flops
from brr.calibration.run import PLAN_FILE, REPORT_JSON, REPORT_MD
from brr.diff import SyntheticWindows, run_diff
from brr.backends.onnxrt.runner import onnxruntime_runner
from brr.diff.engines import onnx_reference_engine
from brr.export.precision_plan import PrecisionPlan, PrecisionPlanError

WINDOW = 64
ATOL = RTOL = 1e-2


def planted_model(scale: float = 300.0) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    mix = numpy_helper.from_array((rng.standard_normal((WINDOW, WINDOW)) * 0.1).astype(np.float32), "mix")
    head = numpy_helper.from_array((rng.standard_normal((WINDOW, WINDOW)) * 0.1).astype(np.float32), "head")
    gain = numpy_helper.from_array(np.array(scale, np.float32), "gain")
    axes = numpy_helper.from_array(np.array([-1], np.int64), "axes")
    nodes = [
        helper.make_node("MatMul", ["eeg", "mix"], ["mixed"], name="mix_matmul"),
        helper.make_node("Mul", ["mixed", "gain"], ["scaled"], name="scale_mul"),
        helper.make_node("ReduceSumSquare", ["scaled", "axes"], ["squared_norm"], name="norm_sumsq", keepdims=1),
        helper.make_node("Sqrt", ["squared_norm"], ["norm"], name="norm_sqrt"),
        helper.make_node("Div", ["scaled", "norm"], ["unit"], name="normalise_div"),
        helper.make_node("MatMul", ["unit", "head"], ["logits"], name="head_matmul"),
    ]
    graph = helper.make_graph(
        nodes, "planted_fp16_overflow",
        [helper.make_tensor_value_info("eeg", TensorProto.FLOAT, ["batch", 19, WINDOW])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 19, WINDOW])],
        [mix, head, gain, axes])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    onnx.checker.check_model(model, full_check=True)
    return model


def cancellation_model() -> onnx.ModelProto:
    """No overflow, only lost digits: (x + 1000) - 1000 keeps x to fp16's spacing at 1000 (0.5), an error
    far beyond the tolerance; the MatMuls around it lose nothing that matters."""
    model = planted_model(scale=1.0)
    offset = numpy_helper.from_array(np.array(1000.0, np.float32), "offset")
    nodes = list(model.graph.node)
    del model.graph.node[:]
    model.graph.node.extend([
        nodes[0],
        helper.make_node("Add", ["mixed", "offset"], ["raised"], name="offset_add"),
        helper.make_node("Sub", ["raised", "offset"], ["restored"], name="offset_sub"),
        helper.make_node("MatMul", ["restored", "head"], ["logits"], name="head_matmul"),
    ])
    keep = [i for i in model.graph.initializer if i.name in ("mix", "head")]
    del model.graph.initializer[:]
    model.graph.initializer.extend([*keep, offset])
    model.graph.output.insert(0, helper.make_tensor_value_info("mixed", TensorProto.FLOAT, ["batch", 19, WINDOW]))
    onnx.checker.check_model(model, full_check=True)
    return model


def windows(count: int = 3) -> list:
    return list(SyntheticWindows(count, WINDOW).labelled())


@pytest.fixture(scope="module")
def planted_plan():
    model = planted_model()
    search = PlanSearch(model, "fp16", windows(), ATOL, RTOL)
    pins, final = search.run()
    return model, search, pins, final


def test_unplanned_fp16_overflows():
    model = planted_model()
    search = PlanSearch(model, "fp16", windows(), ATOL, RTOL)
    evaluation = search.evaluate(search.engine(set()))
    # x / inf = 0: the logits stay finite but wrong.
    assert evaluation.failure is not None and evaluation.failure.verdict == "divergence"


def test_plan_pins_the_overflow_and_only_what_is_needed(planted_plan):
    _, _search, pins, final = planted_plan
    assert "norm_sumsq" in pins
    assert set(pins) <= {"norm_sumsq", "norm_sqrt"}  # the overflowing value and its one consumer at most
    assert pins["norm_sumsq"].reason == "nonfinite"
    assert "fp16 max" in pins["norm_sumsq"].evidence["explanation"]
    assert final.accepted and final.engine == "onnxruntime-fp16-rounded"
    assert all(s.precision_nonfinite == 0 for s in final.stages.values())


def test_plan_makes_the_fp16_diff_clean(planted_plan):
    model, search, pins, _ = planted_plan
    engine = onnx_reference_engine(search.reduced_model(pins), model, "onnx-reference-fp16", "fp16")
    report = run_diff(onnxruntime_runner(model, "fp32"), [engine], SyntheticWindows(4, WINDOW, seed=7), ATOL, RTOL)
    assert report.engines[0].verdict == "clean"
    unplanned = onnx_reference_engine(search.reduced_model(set()), model, "onnx-reference-fp16", "fp16")
    report = run_diff(onnxruntime_runner(model, "fp32"), [unplanned], SyntheticWindows(1, WINDOW), ATOL, RTOL)
    assert report.engines[0].verdict == "divergence"  # x / inf = 0 without the plan


def test_fp16_evaluator_agrees_with_the_true_fp16_model_at_a_pinned_boundary():
    """Pinning only the overflowing node is not enough: its fp32 result is cast to fp16 for the fp16
    consumer and overflows there. The search's rounding evaluator must see that, as the reference
    evaluator on the converted fp16 model does."""
    model = planted_model()
    search = PlanSearch(model, "fp16", windows(1), ATOL, RTOL)
    for pins, accepted in (({"norm_sumsq"}, False), ({"norm_sumsq", "norm_sqrt"}, True)):
        rounded = search.evaluate(search.engine(pins), stop_at_failure=False)
        true_fp16 = search.evaluate(onnx_reference_engine(search.reduced_model(pins), model, "ref", "fp16"),
                                    stop_at_failure=False)
        assert rounded.accepted == true_fp16.accepted == accepted


def test_fp16_evaluator_rounds_a_probe_for_its_consumers():
    """In the probed graphs every stage output is also a graph output; it must still overflow for the
    nodes that consume it, or every hazard at a stage boundary would be invisible."""
    model = planted_model()
    model.graph.output.append(helper.make_tensor_value_info("squared_norm", TensorProto.FLOAT, None))
    evaluation = PlanSearch(model, "fp16", windows(1), ATOL, RTOL).run()[1]
    assert evaluation.accepted
    search = PlanSearch(model, "fp16", windows(1), ATOL, RTOL)
    assert not search.evaluate(search.engine(set())).accepted


def test_lost_digits_are_found_by_bisection_and_only_the_two_nodes_are_pinned():
    model = cancellation_model()
    search = PlanSearch(model, "fp16", windows(2), ATOL, RTOL)
    assert not search.evaluate(search.engine(set())).accepted
    pins, final = search.run()
    # Pinning the Add alone is not enough: its exact fp32 sum is rounded again on its way to the Sub.
    assert set(pins) == {"offset_add", "offset_sub"} and final.accepted
    assert all(pin.reason == "tolerance" for pin in pins.values())
    evidence = pins["offset_add"].evidence
    assert evidence["stage_failing_without_it"] == "logits" and evidence["max_abs_err_without_it"] > ATOL
    assert "leaves the tolerance" in evidence["explanation"]


def test_a_stage_is_judged_on_the_graph_cut_down_to_it():
    search = PlanSearch(cancellation_model(), "fp16", windows(1), ATOL, RTOL)
    cut = search.cut_to("mixed")
    assert [n.name for n in cut.graph.node] == ["mix_matmul"] and [o.name for o in cut.graph.output] == ["mixed"]
    assert {i.name for i in cut.graph.initializer} == {"mix"}
    assert search.upstream("logits") == {"mix_matmul", "offset_add", "offset_sub", "head_matmul"}


def test_clean_model_needs_no_pin():
    pins, final = PlanSearch(planted_model(scale=1.0), "fp16", windows(2), ATOL, RTOL).run()
    assert pins == {} and final.accepted


def test_calibrate_writes_a_plan_export_loads(tmp_path):
    source = tmp_path / "model.onnx"
    onnx.save(planted_model(), str(source))
    result = calibrate(source, SyntheticWindows(2, WINDOW), "fp16", tmp_path / "out", ATOL, RTOL,
                       adversarial=False, speed_repeats=1, say=lambda _: None)
    assert result.passed
    plan = PrecisionPlan.load(tmp_path / "out" / PLAN_FILE)
    assert plan.resolve(source, {}) == sorted(result.plan.fp32_nodes) and "norm_sumsq" in plan.fp32_nodes
    meta = json.loads((tmp_path / "out" / PLAN_FILE).read_text())["metadata"]
    assert meta["pinned_count"] == len(plan.fp32_nodes)
    assert meta["flops"] == {"pinned_flops": 0.0, "total_flops": 2 * 2 * 19 * WINDOW * WINDOW, "share": 0.0}
    assert meta["error_per_stage"]["logits"]["precision_nonfinite"] == 0
    report = json.loads((tmp_path / "out" / REPORT_JSON).read_text())
    assert report["final"]["nonfinite_outputs"] == 0 and set(report["speed_onnxruntime_cpu"]) == {"fp32", "fp16"}
    assert "norm_sumsq" in (tmp_path / "out" / REPORT_MD).read_text()


def test_plan_naming_a_missing_node_is_rejected(tmp_path):
    source = tmp_path / "model.onnx"
    onnx.save(planted_model(), str(source))
    path = tmp_path / "plan.json"
    path.write_text(json.dumps({"fp32_nodes": ["norm_sumsq", "no_such_node"]}))
    with pytest.raises(PrecisionPlanError, match=r"plan\.json: 1 node\(s\) not in .*model\.onnx: no_such_node"):
        PrecisionPlan.load(path).resolve(source, {})


def test_node_flops_counts_matmuls():
    flops = node_flops(planted_model())
    assert flops == {"mix_matmul": 2.0 * 19 * WINDOW * WINDOW, "head_matmul": 2.0 * 19 * WINDOW * WINDOW}


@pytest.fixture(scope="module")
def edf(tmp_path_factory):
    """One 2-minute synthetic 19-channel recording."""
    from brr.data.synthetic import write_corpus

    folder = tmp_path_factory.mktemp("edf")
    write_corpus(folder, recordings=1, minutes=2.0, seed=3)
    (path,) = folder.glob("*.edf")
    return path


def test_calibrator_batches_stream_from_the_edf(edf):
    batches = EdfBatches([edf.parent], batch_size=4, window_samples=2560, max_windows=10)
    fed = list(batches)
    # 12 windows of 10 s in 2 minutes, capped at 10: two full batches of 4, the partial one dropped.
    assert len(fed) == 2 and all(set(f) == {"eeg"} for f in fed)
    assert all(f["eeg"].shape == (4, 19, 2560) and f["eeg"].dtype == np.float32 for f in fed)
    assert np.isfinite(fed[0]["eeg"]).all() and fed[0]["eeg"].std() > 0.1  # preprocessed, normalised EEG
    again = list(batches)  # Polygraphy's Calibrator restarts the loader on reset
    assert np.array_equal(again[1]["eeg"], fed[1]["eeg"])
    assert not np.array_equal(fed[0]["eeg"][0], fed[0]["eeg"][1])  # consecutive windows, not copies


def test_calibrator_data_loader_rejects_bad_data(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such EDF"):
        EdfBatches([tmp_path / "missing.edf"])
    text = tmp_path / "notes.txt"
    text.write_text("x")
    with pytest.raises(ValueError, match="notes.txt: not an EDF/BDF"):
        EdfBatches([text])


def test_polygraphy_calibrator_takes_the_edf_batches(edf, tmp_path):
    trt = pytest.importorskip("tensorrt", reason="TensorRT is not installed: the calibrator class needs it")
    from brr.calibration.int8 import tensorrt_calibrator

    batches = EdfBatches([edf], batch_size=2, window_samples=2560, max_windows=4)
    calibrator = tensorrt_calibrator(batches, tmp_path / "int8.cache")
    assert isinstance(calibrator, trt.IInt8Calibrator) and calibrator.data_loader is batches


def test_int8_onnxruntime_model_runs_and_the_diff_reports_its_error(edf, tmp_path):
    source = tmp_path / "model.onnx"
    onnx.save(planted_model(scale=1.0), str(source))
    result = calibrate(source, [edf], "int8", tmp_path / "out", ATOL, RTOL, adversarial=False, max_windows=6,
                       speed_repeats=1, say=lambda _: None)
    quantized = onnx.load(str(result.model_path))
    assert {"QuantizeLinear", "DequantizeLinear"} <= {n.op_type for n in quantized.graph.node}
    final = result.report["final"]
    assert final["engine"] == "onnxruntime-int8" and final["nonfinite_outputs"] == 0
    assert 0 < final["stages"]["logits"]["max_abs_err"] < 1
    diff = json.loads((tmp_path / "out" / "diff" / "report.json").read_text())
    assert diff["engines"][0]["precision"] == "int8" and len(diff["inputs"]) == 6
    assert result.report["tensorrt"]["built"] is False and "TensorRT" in result.report["tensorrt"]["reason"]


def test_search_judges_adjacency_flips_with_the_models_top_k(monkeypatch):
    """Top-k flips at near-ties are two correct answers; the search must tell the comparator k."""
    import brr.calibration.search as search_module
    from brr.model import resolve_config

    seen = []
    real = search_module.compare_outputs
    monkeypatch.setattr(search_module, "compare_outputs", lambda *a: seen.append(a[-1]) or real(*a))
    config = resolve_config("v3-small")
    PlanSearch(planted_model(scale=1.0), "fp16", windows(1), ATOL, RTOL, config).run()
    assert seen and set(seen) == {config.edge_top_k}


def test_an_error_that_survives_pinning_walks_up_to_the_nearest_unpinned_producers():
    search = PlanSearch(planted_model(), "fp16", windows(1), ATOL, RTOL)
    assert search._producers("normalise_div") == ["norm_sqrt", "scale_mul"]
    search.pins = {name: None for name in ("norm_sqrt", "norm_sumsq", "scale_mul")}
    assert search._producers("norm_sqrt") == ["mix_matmul"]  # through norm_sumsq and scale_mul
    search.pins["mix_matmul"] = None
    assert search._producers("norm_sqrt") == []  # only the graph input and weights remain
