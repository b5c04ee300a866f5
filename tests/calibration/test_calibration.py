"""brr-calibrate: planted fp16 faults are pinned (and nothing else), with their evidence; plans are checked,
the budget is honoured, memory does not grow with the windows; INT8 runs.

The planted models are hand-built ONNX graphs in the detector's I/O contract (``eeg`` (B, 19, W) ->
``logits``), each with one fp16 hazard between MatMuls that fp16 handles well:

- overflow: a cosine-style normalisation whose squared norm overflows fp16 (``ReduceSumSquare`` of
  300 x the input: ~6e6 > 65504); fp32's ranges alone show it.
- underflow: the same normalisation with a 1e-8 floor under the norm: on an all-zero window the
  floor is the whole denominator, and fp16 flushes it to 0 (0/0).
- cancellation: a variance as E[x^2] - E[x]^2 around 100: fp16 rounds both moments to a spacing of 8,
  the difference goes negative and its Sqrt NaN, though every fp32 range is harmless: only the search
  (node level) finds it.
- lost digits: (x + 1000) - 1000, finite everywhere but far beyond the tolerance: bisection finds it.

The search judges fp16 as brr-export's ONNX Runtime engine computes it; its plans are confirmed on the
real fp16 model run by ONNX's reference evaluator (true fp16 per node).
"""

from __future__ import annotations

import json
import logging
import tracemalloc

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from brr.backends.onnxrt.runner import onnxruntime_runner
from brr.calibration import EdfBatches, PlanSearch, calibrate, node_flops
from brr.calibration.ranges import FOUND_BY
from brr.calibration.run import PLAN_FILE, REPORT_JSON, REPORT_MD, compare_with_default_plan
from brr.cli.calibrate import main as calibrate_main
from brr.diff import SyntheticWindows, run_diff
from brr.diff.engines import onnx_reference_engine
from brr.diff.inputs import feed
from brr.export.precision_plan import PrecisionPlan, PrecisionPlanError
from brr.onnx.stages import NAME_SCOPES_KEY, STAGE_METADATA_KEY, WRAPPED_MODULE

WINDOW = 64
ATOL = RTOL = 1e-2
FP16_MAX, FP16_SMALLEST_NORMAL = 65504.0, 2.0**-14


def _model(name: str, nodes: list, initializers: list, window: int = WINDOW) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes, name, [helper.make_tensor_value_info("eeg", TensorProto.FLOAT, ["batch", 19, window])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 19, window])], initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    onnx.checker.check_model(model, full_check=True)
    return model


def _weights() -> list:
    rng = np.random.default_rng(0)
    return [numpy_helper.from_array((rng.standard_normal((WINDOW, WINDOW)) * 0.1).astype(np.float32), name)
            for name in ("mix", "head")] + [numpy_helper.from_array(np.array([-1], np.int64), "axes")]


def planted_model(scale: float = 300.0) -> onnx.ModelProto:
    gain = numpy_helper.from_array(np.array(scale, np.float32), "gain")
    return _model("planted_fp16_overflow", [
        helper.make_node("MatMul", ["eeg", "mix"], ["mixed"], name="mix_matmul"),
        helper.make_node("Mul", ["mixed", "gain"], ["scaled"], name="scale_mul"),
        helper.make_node("ReduceSumSquare", ["scaled", "axes"], ["squared_norm"], name="norm_sumsq", keepdims=1),
        helper.make_node("Sqrt", ["squared_norm"], ["norm"], name="norm_sqrt"),
        helper.make_node("Div", ["scaled", "norm"], ["unit"], name="normalise_div"),
        helper.make_node("MatMul", ["unit", "head"], ["logits"], name="head_matmul"),
    ], [*_weights(), gain])


def floored_norm_model() -> onnx.ModelProto:
    """x / max(||x||, 1e-8): harmless on EEG, 0/0 in fp16 on a window of zeros (the floor flushes to 0)."""
    floor = numpy_helper.from_array(np.array(1e-8, np.float32), "floor")
    return _model("planted_fp16_underflow", [
        helper.make_node("MatMul", ["eeg", "mix"], ["mixed"], name="mix_matmul"),
        helper.make_node("ReduceSumSquare", ["mixed", "axes"], ["squared_norm"], name="norm_sumsq", keepdims=1),
        helper.make_node("Sqrt", ["squared_norm"], ["norm"], name="norm_sqrt"),
        helper.make_node("Max", ["norm", "floor"], ["floored"], name="floor_max"),
        helper.make_node("Div", ["mixed", "floored"], ["unit"], name="normalise_div"),
        helper.make_node("MatMul", ["unit", "head"], ["logits"], name="head_matmul"),
    ], [*_weights(), floor])


def variance_model() -> onnx.ModelProto:
    """(x - E[x]) / sqrt(E[x^2] - E[x]^2) with x ~ 100 + N(0, 1)."""
    offset = numpy_helper.from_array(np.array(100.0, np.float32), "offset")
    return _model("planted_fp16_cancellation", [
        helper.make_node("MatMul", ["eeg", "mix"], ["mixed"], name="mix_matmul"),
        helper.make_node("Add", ["mixed", "offset"], ["raised"], name="offset_add"),
        helper.make_node("Mul", ["raised", "raised"], ["squares"], name="square_mul"),
        helper.make_node("ReduceMean", ["squares", "axes"], ["mean_square"], name="mean_square_reduce"),
        helper.make_node("ReduceMean", ["raised", "axes"], ["mean"], name="mean_reduce"),
        helper.make_node("Mul", ["mean", "mean"], ["square_mean"], name="square_mean_mul"),
        helper.make_node("Sub", ["mean_square", "square_mean"], ["variance"], name="variance_sub"),
        helper.make_node("Sqrt", ["variance"], ["std"], name="std_sqrt"),
        helper.make_node("Sub", ["raised", "mean"], ["centred"], name="centre_sub"),
        helper.make_node("Div", ["centred", "std"], ["standardised"], name="standardise_div"),
        helper.make_node("MatMul", ["standardised", "head"], ["logits"], name="head_matmul"),
    ], [*_weights(), offset])


def cancellation_model() -> onnx.ModelProto:
    """No overflow, only lost digits: (x + 1000) - 1000 keeps x to fp16's spacing at 1000 (0.5), an error
    far beyond the tolerance; the MatMuls around it lose nothing that matters."""
    offset = numpy_helper.from_array(np.array(1000.0, np.float32), "offset")
    model = _model("planted_fp16_lost_digits", [
        helper.make_node("MatMul", ["eeg", "mix"], ["mixed"], name="mix_matmul"),
        helper.make_node("Add", ["mixed", "offset"], ["raised"], name="offset_add"),
        helper.make_node("Sub", ["raised", "offset"], ["restored"], name="offset_sub"),
        helper.make_node("MatMul", ["restored", "head"], ["logits"], name="head_matmul"),
    ], [*_weights(), offset])
    model.graph.output.insert(0, helper.make_tensor_value_info("mixed", TensorProto.FLOAT, ["batch", 19, WINDOW]))
    onnx.checker.check_model(model, full_check=True)
    return model


def windows(count: int = 3) -> list:
    return list(SyntheticWindows(count, WINDOW).labelled())


def with_zero_window(count: int = 2) -> list:
    return [*windows(count), ("all_zero", feed(np.zeros((19, WINDOW))))]


@pytest.fixture(scope="module")
def planted_plan():
    model = planted_model()
    with PlanSearch(model, "fp16", windows(), ATOL, RTOL) as search:
        pins, final = search.run()
        yield model, search, pins, final


def test_unplanned_fp16_overflow_fails_inside_the_engine():
    """x / inf = 0: the logits stay finite but wrong; the window fails for the inf the probes hide."""
    with PlanSearch(planted_model(), "fp16", windows(), ATOL, RTOL) as search:
        failure = search.evaluate(search.engine(set())).failure
        evaluation = search.evaluate(search.engine(set()), stop_at_failure=False)
    assert failure.verdict == "nonfinite_precision" and failure.nonfinite_hidden
    assert failure.stages["logits"].stats.precision_nonfinite == 0  # every probe finite
    assert evaluation.first_nonfinite == {label: "squared_norm" for label, _ in windows()}


def test_fp32_pass_pins_the_overflow_with_its_evidence_before_any_evaluation():
    with PlanSearch(planted_model(), "fp16", windows(), ATOL, RTOL) as search:
        pins = search.pin_from_ranges()
        assert search.evaluations == 0
    assert [(p.node, p.reason) for p in pins] == [("norm_sumsq", "overflow"), ("norm_sqrt", "overflow_consumer")]
    evidence = pins[0].evidence
    assert evidence["found_by"] == FOUND_BY and evidence["tensor"] == "squared_norm"
    assert evidence["fp32_abs_max"] > FP16_MAX and evidence["limit"] == FP16_MAX
    assert evidence["window"] in {label for label, _ in windows()} and pins[0].window == evidence["window"]
    assert "beyond fp16's largest finite 65504" in evidence["explanation"]
    assert "squared_norm" in pins[1].evidence["explanation"]


def test_plan_pins_the_overflow_and_only_what_is_needed(planted_plan):
    _, search, pins, final = planted_plan
    # The overflowing value and its one consumer (a pinned node's output still reaches an fp16 consumer
    # through a cast to fp16), both from the fp32 ranges: the one evaluation only confirms them.
    assert set(pins) == {"norm_sumsq", "norm_sqrt"} and search.evaluations == 1
    assert pins["norm_sumsq"].reason == "overflow"
    assert "beyond fp16's largest finite 65504" in pins["norm_sumsq"].evidence["explanation"]
    assert final.accepted and final.engine == "onnxruntime-fp16" and search.stopped == "accepted"
    assert all(s.precision_nonfinite == 0 for s in final.stages.values())


def test_underflow_to_zero_then_divide_is_pinned_from_the_fp32_ranges():
    model = floored_norm_model()
    with PlanSearch(model, "fp16", with_zero_window(), ATOL, RTOL) as search:
        unplanned = search.evaluate(search.engine(set()), stop_at_failure=False)
        pins = search.pin_from_ranges()
        final_pins, final = search.run()
    assert [i.input for i in unplanned.failures] == ["all_zero"]  # 0/0 = NaN on the zero window only
    assert {p.node: p.reason for p in pins} == {"floor_max": "underflow_producer", "normalise_div": "underflow"}
    evidence = next(p for p in pins if p.node == "normalise_div").evidence
    assert evidence["tensor"] == "floored" and evidence["window"] == "all_zero" and evidence["cause"] == "underflow"
    assert evidence["fp32_abs_max"] == pytest.approx(1e-8) and evidence["limit"] == FP16_SMALLEST_NORMAL
    assert "smallest normal" in evidence["explanation"]
    assert final.accepted and set(final_pins) == {"floor_max", "normalise_div"}


def test_a_nonfinite_value_the_fp32_ranges_cannot_foresee_is_found_by_node_level():
    with PlanSearch(variance_model(), "fp16", windows(), ATOL, RTOL) as search:
        assert search.pin_from_ranges() == []  # every fp32 value is well inside fp16's range
        pins, final = search.run()
    assert final.accepted
    first = pins["std_sqrt"]
    assert first.reason == "nonfinite" and first.engine == "onnxruntime-fp16"
    assert first.evidence["node"] == "std_sqrt" and first.evidence["kind"] == "precision"
    assert first.evidence["explanation"].startswith("cancellation: input variance goes down to")
    # Pinning the Sqrt alone leaves its input ruined: the producers are pinned, walking up.
    assert {"variance_sub", "mean_square_reduce", "square_mean_mul"} <= set(pins)
    assert all(pins[n].reason == "nonfinite_input" for n in ("variance_sub", "mean_square_reduce"))


def test_plan_makes_the_fp16_diff_clean(planted_plan):
    model, search, pins, _ = planted_plan
    engine = onnx_reference_engine(search.reduced_model(pins), model, "onnx-reference-fp16", "fp16")
    report = run_diff(onnxruntime_runner(model, "fp32"), [engine], SyntheticWindows(4, WINDOW, seed=7), ATOL, RTOL)
    assert report.engines[0].verdict == "clean"
    unplanned = onnx_reference_engine(search.reduced_model(set()), model, "onnx-reference-fp16", "fp16")
    report = run_diff(onnxruntime_runner(model, "fp32"), [unplanned], SyntheticWindows(1, WINDOW), ATOL, RTOL)
    assert report.engines[0].verdict == "nonfinite_precision"  # x / inf = 0 without the plan, inf inside


def test_fp16_evaluator_agrees_with_the_true_fp16_model_at_a_pinned_boundary():
    """Pinning only the overflowing node is not enough: its fp32 result is cast to fp16 for the fp16
    consumer and overflows there. The search's evaluator must see that, as the reference evaluator on
    the converted fp16 model does."""
    model = planted_model()
    with PlanSearch(model, "fp16", windows(1), ATOL, RTOL) as search:
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
    with PlanSearch(model, "fp16", windows(1), ATOL, RTOL) as search:
        assert not search.evaluate(search.engine(set())).accepted
        assert search.run()[1].accepted


def test_node_level_pins_the_reader_of_a_result_that_overflows_when_stored():
    """Without the fp32 ranges' pins, node level names the squared norm's node: its fp32 result overflows when
    stored in fp16. Pinned alone, its result would still reach the Sqrt through a cast to fp16: the Sqrt is
    pinned with it, as the reader of that store, and one more evaluation accepts the plan."""
    with PlanSearch(planted_model(), "fp16", windows(1), ATOL, RTOL) as search:
        search.ranges_pinned = True  # node level alone
        pins, final = search.run()
    assert final.accepted and search.evaluations == 2 and set(pins) == {"norm_sumsq", "norm_sqrt"}
    assert (pins["norm_sumsq"].reason, pins["norm_sumsq"].evidence["cause"]) == ("nonfinite", "overflow when stored")
    assert pins["norm_sqrt"].reason == "nonfinite_consumer" and pins["norm_sqrt"].evidence["producer"] == "norm_sumsq"


def test_lost_digits_are_found_by_bisection_and_only_the_two_nodes_are_pinned():
    with PlanSearch(cancellation_model(), "fp16", windows(2), ATOL, RTOL) as search:
        assert not search.evaluate(search.engine(set())).accepted
        pins, final = search.run()
    # Pinning the Add alone is not enough: its exact fp32 sum is rounded again on its way to the Sub.
    assert set(pins) == {"offset_add", "offset_sub"} and final.accepted
    assert all(pin.reason == "tolerance" for pin in pins.values())
    evidence = pins["offset_add"].evidence
    assert evidence["stage_failing_without_it"] == "logits" and evidence["max_abs_err_without_it"] > ATOL
    assert "leaves the tolerance" in evidence["explanation"]


def test_a_stage_is_judged_on_the_graph_cut_down_to_it():
    with PlanSearch(cancellation_model(), "fp16", windows(1), ATOL, RTOL) as search:
        cut = search.cut_to("mixed")
        assert [n.name for n in cut.graph.node] == ["mix_matmul"] and [o.name for o in cut.graph.output] == ["mixed"]
        assert {i.name for i in cut.graph.initializer} == {"mix"}
        assert search.upstream("logits") == {"mix_matmul", "offset_add", "offset_sub", "head_matmul"}


def test_clean_model_needs_no_pin():
    with PlanSearch(planted_model(scale=1.0), "fp16", windows(2), ATOL, RTOL) as search:
        pins, final = search.run()
    assert pins == {} and final.accepted


def test_sessions_are_reused_where_the_graph_is_the_same():
    """The fp32 statistics session serves the fp32 pass and every node-level scan; an engine's
    instrumented session serves its evaluation and the scan of its failures."""
    with PlanSearch(variance_model(), "fp16", windows(1), ATOL, RTOL) as search:
        search.pin_from_ranges()
        evaluation = search.evaluate(search.engine(set()), stop_at_failure=False)
        created = search.sessions.created
        search.fix(evaluation)
        assert search.sessions.created == created + 2  # the scan's two marked runs; statistics reused
        assert len(search.sessions.kept) == 1 and len(search.sessions.recent) <= search.sessions.capacity


def _traced_peak(window_count: int, window: int) -> int:
    """Peak Python-side memory (numpy arrays included) of a whole search over ``window_count`` windows."""
    gain = numpy_helper.from_array(np.array(300.0, np.float32), "gain")
    axes = numpy_helper.from_array(np.array([-1], np.int64), "axes")
    model = _model("elementwise_norm", [
        helper.make_node("Mul", ["eeg", "gain"], ["scaled"], name="scale_mul"),
        helper.make_node("ReduceSumSquare", ["scaled", "axes"], ["squared_norm"], name="norm_sumsq", keepdims=1),
        helper.make_node("Sqrt", ["squared_norm"], ["norm"], name="norm_sqrt"),
        helper.make_node("Div", ["scaled", "norm"], ["logits"], name="normalise_div"),
    ], [gain, axes], window=window)
    tracemalloc.start()
    try:
        with PlanSearch(model, "fp16", SyntheticWindows(window_count, window), ATOL, RTOL) as search:
            assert search.run()[1].accepted
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_memory_does_not_grow_with_the_windows():
    """Windows and their fp32 outputs wait on disk: 8 windows of 1.2 MB (and their outputs) peak as 2 do.
    Held in memory, as before, they added ~15 MB."""
    window = 16384
    two, eight = _traced_peak(2, window), _traced_peak(8, window)
    assert eight <= 1.1 * two, (two, eight)


def _tag(model: onnx.ModelProto, node: str, stage: str | None = None, module: str | None = None) -> None:
    target = next(n for n in model.graph.node if n.name == node)
    if stage:
        target.metadata_props.add(key=STAGE_METADATA_KEY, value=stage)
    if module:
        scopes = ["", WRAPPED_MODULE] + [f"{WRAPPED_MODULE}.{module.rsplit('.', i)[0]}" for i in (1, 0)]
        target.metadata_props.add(key=NAME_SCOPES_KEY, value=repr(scopes))


def test_the_plan_is_compared_with_the_default_plan(tmp_path):
    model = planted_model()
    _tag(model, "norm_sumsq", module="node_stream.node_mamba.norm")  # the default plan's "*_mamba.norm"
    _tag(model, "normalise_div", stage="edge_similarity")  # and its edge_similarity stage
    path = tmp_path / "model.onnx"
    onnx.save(model, str(path))
    compared = compare_with_default_plan("fp16", path, model, {"norm_sumsq", "norm_sqrt"})
    assert compared["applies"] and compared["default_count"] == 2
    assert compared["in_both"] == ["norm_sumsq"] and compared["only_in_default"] == ["normalise_div"]
    assert compared["only_in_calibrated"] == ["norm_sqrt"]
    onnx.save(planted_model(), str(tmp_path / "untagged.onnx"))
    untagged = compare_with_default_plan("fp16", tmp_path / "untagged.onnx", planted_model(), set())
    assert not untagged["applies"] and "matches no node" in untagged["reason"]


def test_calibrate_writes_a_plan_export_loads(tmp_path):
    source = tmp_path / "model.onnx"
    onnx.save(planted_model(), str(source))
    result = calibrate(source, SyntheticWindows(2, WINDOW), "fp16", tmp_path / "out", ATOL, RTOL,
                       adversarial=False, speed_repeats=1)
    assert result.passed
    plan = PrecisionPlan.load(tmp_path / "out" / PLAN_FILE)
    assert plan.resolve(source, {}) == sorted(result.plan.fp32_nodes) and "norm_sumsq" in plan.fp32_nodes
    meta = json.loads((tmp_path / "out" / PLAN_FILE).read_text())["metadata"]
    assert meta["pinned_count"] == len(plan.fp32_nodes) and meta["accepted"] and meta["not_accepted_on"] == []
    assert meta["pinned_by_fp32_ranges"] == 2 and meta["pinned"][0]["evidence"]["fp32_abs_max"] > FP16_MAX
    assert meta["flops"] == {"pinned_flops": 0.0, "total_flops": 2 * 2 * 19 * WINDOW * WINDOW, "share": 0.0}
    assert meta["error_per_stage"]["logits"]["precision_nonfinite"] == 0
    assert meta["default_plan"]["applies"] is False  # a hand-built graph has none of the detector's modules
    report = json.loads((tmp_path / "out" / REPORT_JSON).read_text())
    assert report["final"]["nonfinite_outputs"] == 0 and set(report["speed_onnxruntime_cpu"]) == {"fp32", "fp16"}
    assert report["cost"]["peak_rss_mb"] > 0 and report["search"]["evaluations"] == 1
    assert "norm_sumsq" in (tmp_path / "out" / REPORT_MD).read_text()
    # The plan's typed graph was checked against TensorRT's strong typing before the plan was written.
    assert report["strong_typing"]["nodes_checked"] > 0 and report["strong_typing"]["errors"] == []


def test_tolerance_follows_the_precision(tmp_path):
    """By default the plan is held to the tolerance brr-export verifies the engine with."""
    source = tmp_path / "model.onnx"
    onnx.save(planted_model(), str(source))
    for precision, tolerance, pinned in (("fp16", {"atol": 0.1, "rtol": 0.05}, ("norm_sqrt", "norm_sumsq")),
                                         ("bf16", {"atol": 0.25, "rtol": 0.05}, ())):
        result = calibrate(source, synthetic=2, precision=precision, out=tmp_path / precision, adversarial=False,
                           speed_repeats=1)
        assert result.report["tolerance"] == tolerance and result.passed
        assert result.plan.fp32_nodes == pinned  # bf16 has fp32's range: nothing overflows


def test_budget_stops_the_search_and_writes_the_best_verified_plan(tmp_path, caplog):
    source = tmp_path / "model.onnx"
    onnx.save(cancellation_model(), str(source))
    out = tmp_path / "out"
    with caplog.at_level(logging.INFO, logger="brr.calibration"):
        result = calibrate(source, synthetic=2, precision="fp16", out=out, atol=ATOL, rtol=RTOL, adversarial=False,
                           speed_repeats=1, budget_minutes=1e-6)
    lines = caplog.messages
    assert not result.passed and result.report["stopped"] == "budget"
    assert result.report["search"]["evaluations"] == 1  # the first plan's evaluation, then the budget
    doc = json.loads((out / PLAN_FILE).read_text())
    assert doc["fp32_nodes"] == [] and doc["metadata"]["accepted"] is False
    assert [f["window"] for f in doc["metadata"]["not_accepted_on"]] == ["synthetic-0", "synthetic-1"]
    assert all(f["verdict"] == "divergence" and f["stage"] == "logits" for f in doc["metadata"]["not_accepted_on"])
    assert "NOT ACCEPTED" in doc["comment"] and "budget" in doc["comment"]
    assert "**NOT ACCEPTED**: the budget ran out" in (out / "calibration_report.md").read_text()
    assert any(line.startswith("budget of") for line in lines)
    assert all("peak RSS" in line for line in lines if line.startswith(("evaluation", "fp32 pass", "pin")))


def test_cli_exit_codes_and_progress(tmp_path, capsys):
    source = tmp_path / "model.onnx"
    onnx.save(cancellation_model(), str(source))
    common = [str(source), "--synthetic", "2", "--no-adversarial", "--atol", "0.01", "--rtol", "0.01"]
    assert calibrate_main([*common, "--budget", "0.000001", "--out", str(tmp_path / "a")]) == 1
    err = capsys.readouterr().err
    assert "brr-calibrate: fp32 pass: window 1 synthetic-0" in err and "budget of" in err
    assert calibrate_main([*common, "--out", str(tmp_path / "b")]) == 0
    assert calibrate_main([str(source), "--out", str(tmp_path / "c")]) == 2  # neither --data nor --synthetic
    assert calibrate_main([str(tmp_path / "missing.onnx"), "--synthetic", "1", "--out", str(tmp_path / "d")]) == 2


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


def test_node_flops_counts_the_selective_scans_recurrence():
    """A plugin graph's SelectiveScan: 5 FLOPs per (token, head, head-dim lane, state), at the given batch; None
    while its length is unknown."""
    from onnx import TensorProto, helper

    def scan_model(length):
        shapes = {"x": [1, length, 4, 3], "dt": [1, length, 4], "A": [4], "B": [1, length, 2, 5],
                  "C": [1, length, 2, 5], "D": [4], "dt_bias": [4]}
        node = helper.make_node("SelectiveScan", list(shapes), ["y"], name="scan", domain="ai.onnx.contrib")
        graph = helper.make_graph([node], "scan", [helper.make_tensor_value_info(k, TensorProto.FLOAT, v)
                                                   for k, v in shapes.items()],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18),
                                                       helper.make_opsetid("ai.onnx.contrib", 1)])

    assert node_flops(scan_model(100), batch=3) == {"scan": 5.0 * 3 * 100 * 4 * 3 * 5}
    assert node_flops(scan_model("length")) == {"scan": None}


def test_node_transcendentals_counts_the_values_of_sigmoid_exp_softplus():
    """Each Sigmoid, Exp, Softplus, ... node's output size at the given batch (a SiLU's Sigmoid, not its Mul);
    None while a shape is unknown."""
    from onnx import TensorProto, helper

    from brr.calibration.flops import node_transcendentals

    def silu_model(length):
        nodes = [helper.make_node("Sigmoid", ["x"], ["gate"], name="silu_sigmoid"),
                 helper.make_node("Mul", ["x", "gate"], ["silu"], name="silu_mul"),
                 helper.make_node("Softplus", ["silu"], ["soft"], name="softplus"),
                 helper.make_node("ReduceMean", ["soft"], ["mean"], name="mean", keepdims=1),
                 helper.make_node("Exp", ["mean"], ["y"], name="exp")]
        graph = helper.make_graph(nodes, "silu", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                                [1, 8, length])],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])

    assert node_transcendentals(silu_model(100), batch=3) == {"silu_sigmoid": 2400.0, "softplus": 2400.0, "exp": 1.0}
    assert node_transcendentals(silu_model("length"))["silu_sigmoid"] is None


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
    again = list(batches)  # each pass reads the recordings again
    assert np.array_equal(again[1]["eeg"], fed[1]["eeg"])
    assert not np.array_equal(fed[0]["eeg"][0], fed[0]["eeg"][1])  # consecutive windows, not copies


def test_calibrator_data_loader_rejects_bad_data(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such EDF"):
        EdfBatches([tmp_path / "missing.edf"])
    text = tmp_path / "notes.txt"
    text.write_text("x")
    with pytest.raises(ValueError, match="notes.txt: not an EDF/BDF"):
        EdfBatches([text])


def test_int8_onnxruntime_model_runs_and_the_diff_reports_its_error(edf, tmp_path):
    source = tmp_path / "model.onnx"
    onnx.save(planted_model(scale=1.0), str(source))
    result = calibrate(source, [edf], "int8", tmp_path / "out", ATOL, RTOL, adversarial=False, max_windows=6,
                       speed_repeats=1)
    quantized = onnx.load(str(result.model_path))
    assert {"QuantizeLinear", "DequantizeLinear"} <= {n.op_type for n in quantized.graph.node}
    final = result.report["final"]
    assert final["engine"] == "onnxruntime-int8" and final["nonfinite_outputs"] == 0
    assert 0 < final["stages"]["logits"]["max_abs_err"] < 1
    diff = json.loads((tmp_path / "out" / "diff" / "report.json").read_text())
    assert diff["engines"][0]["precision"] == "int8" and len(diff["inputs"]) == 6
    assert result.report["tensorrt"]["built"] is False and "TensorRT" in result.report["tensorrt"]["reason"]
    assert result.report["strong_typing"]["errors"] == []  # symmetric int8 Q/DQ, as TensorRT builds it


def test_search_judges_adjacency_flips_with_the_models_top_k(monkeypatch):
    """Top-k flips at near-ties are two correct answers; the search must tell the comparator k."""
    import brr.calibration.search as search_module
    from brr.model import resolve_config

    seen = []
    real = search_module.compare_outputs
    monkeypatch.setattr(search_module, "compare_outputs", lambda *a: seen.append(a[-1]) or real(*a))
    config = resolve_config("v3-small")
    with PlanSearch(planted_model(scale=1.0), "fp16", windows(1), ATOL, RTOL, config) as search:
        search.run()
    assert seen and set(seen) == {config.edge_top_k}


def test_an_error_that_survives_pinning_walks_up_to_the_nearest_unpinned_producers():
    with PlanSearch(planted_model(), "fp16", windows(1), ATOL, RTOL) as search:
        assert search._producers("normalise_div") == ["norm_sqrt", "scale_mul"]
        search.pins = {name: None for name in ("norm_sqrt", "norm_sumsq", "scale_mul")}
        assert search._producers("norm_sqrt") == ["mix_matmul"]  # through norm_sumsq and scale_mul
        search.pins["mix_matmul"] = None
        assert search._producers("norm_sqrt") == []  # only the graph input and weights remain
