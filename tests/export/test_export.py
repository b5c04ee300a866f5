"""brr-export: ONNX export, ORT/OpenVINO engines, manifests, runners, CLI (v3-small; one slow v3 test)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from brr.artifact.files import ONNX_FILE
from brr.artifact.load import load_runner
from brr.artifact.manifest import ManifestError, read_manifest, verify_manifest, write_manifest
from brr.backends import BACKENDS
from brr.backends.base import EngineBuildError, Int8Calibration
from brr.backends.openvino.lowering import PROJECTED_MAX_FEATURES
from brr.backends.torch.runner import TorchRunner
from brr.diff.compare import reference_spectrum
from brr.diff.probes import compare_outputs
from brr.diff.verify import verify_engine
from brr.export.onnx_export import export_onnx
from brr.export.precision_plan import PrecisionPlan, PrecisionPlanError, default_plan
from brr.export.run import calibration_windows, engine_plan
from brr.machine import has_bf16
from brr.model import GRAPH_OUTPUT_NAMES, PROBE_NAMES, build_detector, guards, save_checkpoint
from brr.onnx.stages import STAGE_METADATA_KEY, node_stages
from brr.ops.selective_scan import native as selective_scan_native

PARITY_ATOL = 1e-4


def _model(**overrides):
    torch.manual_seed(1)
    return build_detector({"base": "v3-small", **overrides}).eval()


def _reference_manifest(export, model):
    write_manifest(export.directory, source={"checkpoint": "in-memory"}, config=model.config, backend="onnxruntime",
                   precision="fp32", ops=export.ops, opset=export.opset, model_file=ONNX_FILE, pinned_nodes=[])


@pytest.fixture(scope="module")
def guarded():
    return _model()


@pytest.fixture(scope="module")
def windows(guarded):
    """Three non-degenerate windows, the PyTorch fp32 logits and probes for them."""
    g = torch.Generator().manual_seed(7)
    x = torch.randn(3, 19, 15360, generator=g)
    x[1] *= 5.0
    x[2, :, 4000:4010] *= 1000.0
    with torch.no_grad():
        logits, probes = guarded(x, return_probes=True)
    return x.numpy(), logits.numpy(), {k: v.numpy() for k, v in probes.items()}


@pytest.fixture(scope="module")
def exports(guarded, tmp_path_factory):
    out = {}
    for ops in ("standard", "plugin"):
        out[ops] = export_onnx(guarded, tmp_path_factory.mktemp(f"onnx-{ops}"), ops)
        _reference_manifest(out[ops], guarded)
    return out


def _run(path, x, probes=False):
    with load_runner(path, probes=probes) as runner:
        return runner.infer({"eeg": x})


def test_onnx_is_valid_with_dynamic_batch_and_probes(exports):
    for export in exports.values():
        model = onnx.load(str(export.model))
        onnx.checker.check_model(model, full_check=True)
        onnx.shape_inference.infer_shapes(model, strict_mode=True)
        assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 18
        (eeg,) = model.graph.input
        assert eeg.name == "eeg" and eeg.type.tensor_type.shape.dim[0].dim_param
        # Logits first: a client that takes output 0 gets what is served.
        assert [o.name for o in model.graph.output] == list(GRAPH_OUTPUT_NAMES)
        assert GRAPH_OUTPUT_NAMES[0] == "logits" and set(GRAPH_OUTPUT_NAMES) == set(PROBE_NAMES)
        stages = json.loads(export.stages.read_text())
        assert {n.name for n in model.graph.node} == set(stages)
        assert set(stages.values()) == set(PROBE_NAMES)
        assert all({p.key: p.value for p in n.metadata_props}[STAGE_METADATA_KEY] == stages[n.name]
                   for n in model.graph.node)
    plugin_ops = {n.op_type for n in onnx.load(str(exports["plugin"].model)).graph.node}
    assert {"SelectiveScan", "SymmetricEigh"} <= plugin_ops
    assert not {"SelectiveScan", "SymmetricEigh"} & {n.op_type for n in onnx.load(str(exports["standard"].model)).graph.node}


def test_stage_map_follows_the_modules(exports):
    stages = json.loads(exports["plugin"].stages.read_text())
    by_op = {}
    for node in onnx.load(str(exports["plugin"].model)).graph.node:
        by_op.setdefault(node.op_type, set()).add(stages[node.name])
    assert by_op["SymmetricEigh"] == {"laplacian_pe"}
    assert by_op["SelectiveScan"] == {"node_stream", "edge_weights"}
    assert "edge_similarity" in by_op["ReduceSum"] | by_op.get("ReduceL2", set()) | by_op["Sqrt"]


def test_the_stage_map_is_read_back_by_the_rule_that_wrote_it(exports):
    model = onnx.load(str(exports["standard"].model))
    written = json.loads(exports["standard"].stages.read_text())
    assert node_stages(model) == written
    for node in model.graph.node:  # untagged: derived from the module paths the exporter kept
        kept = [p for p in node.metadata_props if p.key != STAGE_METADATA_KEY]
        del node.metadata_props[:]
        node.metadata_props.extend(kept)
    assert node_stages(model) == written


@pytest.mark.parametrize("ops, batch", [("standard", 3), ("plugin", 1)])
def test_ort_fp32_matches_pytorch(exports, windows, ops, batch):
    x, expected, _ = windows
    logits = _run(exports[ops].model, x[:batch])["logits"]
    assert logits.shape == (batch, 15360)
    assert np.abs(logits - expected[:batch]).max() <= PARITY_ATOL


def test_served_model_gives_the_pytorch_probes_and_serves_logits_alone(exports, windows):
    x, _, expected = windows
    outputs = _run(exports["standard"].model, x[:1], probes=True)
    assert list(outputs) == list(GRAPH_OUTPUT_NAMES)
    assert list(_run(exports["standard"].model, x[:1])) == ["logits"]
    first = ort.InferenceSession(str(exports["standard"].model)).run(None, {"eeg": x[:1]})[0]
    assert np.array_equal(first, outputs["logits"])
    for name in ("tcn", "edge_similarity", "adjacency", "logits"):
        scale = max(1.0, float(np.abs(expected[name][:1]).max()))
        assert np.abs(outputs[name] - expected[name][:1]).max() <= PARITY_ATOL * scale


@pytest.mark.parametrize("ops", ["standard", "plugin"])
@pytest.mark.parametrize("guards, dynamic_pe", [(False, True), (True, False), (False, False)])
def test_every_variant_exports_and_matches_at_batch_1_and_3(tmp_path, windows, ops, guards, dynamic_pe):
    """Guards on/off x dynamic/static PE x both ops modes (guards on + dynamic is covered above)."""
    model = _model(guards=guards, use_dynamic_pe=dynamic_pe)
    export = export_onnx(model, tmp_path, ops)
    _reference_manifest(export, model)
    x, _, _ = windows
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    for batch in (1, 3):
        assert np.abs(_run(export.model, x[:batch])["logits"] - expected[:batch]).max() <= PARITY_ATOL


def test_export_is_deterministic(guarded, exports, tmp_path):
    again = export_onnx(guarded, tmp_path, "standard")
    assert again.model.read_bytes() == exports["standard"].model.read_bytes()


@pytest.mark.parametrize("backend, precision, bound", [
    ("onnxruntime", "fp16", 0.5), ("onnxruntime", "bf16", 1.0), ("onnxruntime", "int8", 2.0),
    ("openvino", "fp32", PARITY_ATOL),
])
def test_engines_run_and_error_is_bounded(exports, guarded, windows, tmp_path, backend, precision, bound):
    x, expected, _ = windows
    rng = np.random.default_rng(0)
    built = BACKENDS[backend].build(exports["standard"].model, "standard", tmp_path, precision, [], (1, 1, 1),
                                    guarded.config,
                                    Int8Calibration([rng.standard_normal((1, 19, 15360)).astype(np.float32)
                                                     for _ in range(2)]))
    write_manifest(tmp_path, source={}, config=guarded.config, backend=backend, precision=precision,
                   ops="standard", opset=18, model_file=built.model_file, pinned_nodes=built.pinned_nodes,
                   settings=built.settings)
    logits = _run(tmp_path, x[:1])["logits"]
    error = float(np.abs(logits - expected[:1]).max())
    print(f"{backend} {precision}: max |logit error| {error:.3g}")
    assert np.isfinite(logits).all() and error <= bound
    if precision != "fp32":
        assert error > 1e-6  # a reduced-precision engine that matches fp32 exactly was not converted


def test_int8_tcn_plan_quantizes_the_tcn_alone(exports, guarded, tmp_path):
    stages = json.loads(exports["standard"].stages.read_text())
    pinned = engine_plan("int8-tcn", "int8").resolve(exports["standard"].model, stages)
    assert set(stages) - set(pinned) == {n for n, stage in stages.items() if stage == "tcn"}
    with pytest.warns(UserWarning, match="synthetic noise"):
        windows = list(calibration_windows(None, 15360, count=1))
    BACKENDS["onnxruntime"].build(exports["standard"].model, "standard", tmp_path, "int8", pinned, (1, 1, 1),
                                  guarded.config, Int8Calibration(windows))
    graph = onnx.load(str(tmp_path / ONNX_FILE)).graph
    # The weights of the TCN's convolutions, each of them, reach it through int8; no other node's do.
    producers = {o: n.op_type for n in graph.node for o in n.output}
    int8_weighted = {n.name for n in graph.node if n.op_type in ("Conv", "MatMul") and len(n.input) > 1
                     and producers.get(n.input[1]) == "DequantizeLinear"}
    tcn_convolutions = {n.name for n in graph.node if n.op_type == "Conv" and stages.get(n.name) == "tcn"}
    assert tcn_convolutions and int8_weighted == tcn_convolutions
    with pytest.raises(PrecisionPlanError, match="the plan int8-tcn is for int8 engines, not fp16"):
        engine_plan("int8-tcn", "fp16")
    # A plan with a scope of its own is OpenVINO's: ONNX Runtime refuses it before it writes anything.
    scoped = Int8Calibration(windows, engine_plan("int8-tcn-bf16", "int8").int8_scope)
    with pytest.raises(EngineBuildError, match="int8_stages and unquantized_precision are for OpenVINO"):
        BACKENDS["onnxruntime"].build(exports["standard"].model, "standard", tmp_path / "scoped", "int8", pinned,
                                      (1, 1, 1), guarded.config, scoped)
    assert not (tmp_path / "scoped").exists()


def test_fp16_keeps_planned_nodes_in_fp32(exports, guarded, tmp_path):
    stages = json.loads(exports["standard"].stages.read_text())
    pinned = PrecisionPlan(fp32_stages=("edge_similarity",)).resolve(exports["standard"].model, stages)
    assert pinned and all(stages[n] == "edge_similarity" for n in pinned)
    BACKENDS["onnxruntime"].build(exports["standard"].model, "standard", tmp_path, "fp16", pinned, (1, 1, 1),
                                  guarded.config, None)
    converted = onnx.load(str(tmp_path / ONNX_FILE))
    onnx.shape_inference.infer_shapes(converted, strict_mode=True)
    names = {n.name for n in converted.graph.node}
    # Every other float-producing node computes in fp32 and stores through fp16 (its result is renamed
    # <node>_unrounded and a Cast pair takes its name); pinned nodes neither.
    assert not any(f"{n}_unrounded" in names for n in pinned)
    rounded = [n for n in stages if stages[n] == "tcn" and f"{n}_unrounded" in names]
    assert rounded and any(n.op_type == "Cast" and n.name in rounded for n in converted.graph.node)


def test_a_pinned_loop_keeps_its_body_in_fp32(exports, guarded, tmp_path):
    """The standard-ops eigendecomposition is a Loop: pinning it pins the Jacobi sweeps inside it."""
    stages = json.loads(exports["standard"].stages.read_text())
    pinned = PrecisionPlan(fp32_stages=("laplacian_pe",)).resolve(exports["standard"].model, stages)
    BACKENDS["onnxruntime"].build(exports["standard"].model, "standard", tmp_path, "fp16", pinned, (1, 1, 1),
                                  guarded.config, None)
    (loop,) = [n for n in onnx.load(str(tmp_path / ONNX_FILE)).graph.node if n.op_type == "Loop"]
    body = next(a.g for a in loop.attribute if a.name == "body")
    casts = [n for n in body.node if n.op_type == "Cast" and n.name.endswith("_to_fp16")]
    assert loop.name in pinned and casts == []


def _openvino_bf16_with_tcn_in_fp32(exports, guarded, directory):
    stages = json.loads(exports["plugin"].stages.read_text())
    planned = PrecisionPlan(fp32_stages=("tcn",)).resolve(exports["plugin"].model, stages)
    built = BACKENDS["openvino"].build(exports["plugin"].model, "plugin", directory, "bf16", planned, (1, 1, 1),
                                       guarded.config, None)
    convs = {n.name for n in onnx.load(str(exports["plugin"].model), load_external_data=False).graph.node
             if n.op_type == "Conv"}
    return planned, built, {n for n in convs if stages[n] == "tcn"}, {n for n in convs if stages[n] != "tcn"}


def test_openvino_marks_the_planned_layers_precise(exports, guarded, tmp_path):
    """OpenVINO has no per-node precision option: the plan's nodes must reach the IR as the 'precise'
    attribute, on their layers only, and nodes without a layer must be named in the settings."""
    import xml.etree.ElementTree as ET

    planned, built, tcn_convs, _ = _openvino_bf16_with_tcn_in_fp32(exports, guarded, tmp_path)
    assert tcn_convs <= set(built.pinned_nodes) <= set(planned)
    assert sorted(set(planned) - set(built.pinned_nodes)) == built.settings["fp32_nodes_without_layer"]
    precise = {layer.get("name") for layer in ET.parse(tmp_path / "model.xml").getroot().iter("layer")
               if any(a.get("name") == "precise" for a in layer.iter("attribute"))}
    assert len(precise) == built.settings["fp32_layers"] > 0
    # A layer takes its node's name, or its probe's where the node makes one (the TCN's last conv: 'tcn').
    assert {name.split("/")[0] for name in precise} <= set(built.pinned_nodes) | {"tcn"}
    assert "tcn" in precise


@pytest.mark.skipif(not has_bf16(), reason="the CPU has no bf16 (AVX-512 bf16 or AMX): OpenVINO runs bf16 engines in "
                                           "fp32 here, so a pinned layer cannot be told from the others")
def test_openvino_bf16_runs_planned_layers_in_fp32(exports, guarded, windows, tmp_path):
    from brr.backends.openvino.loader import CompiledModel, openvino_extensions

    _, _, tcn_convs, other_convs = _openvino_bf16_with_tcn_in_fp32(exports, guarded, tmp_path)
    loader = CompiledModel(tmp_path / "model.xml", "bf16", extensions=openvino_extensions("plugin"))
    loader.config["PERF_COUNT"] = True  # the kernel each layer ran, precision included
    request = loader().create_infer_request()
    request.infer({"eeg": windows[0][:1]})
    kernels = {p.node_name: p.exec_type.lower() for p in request.profiling_info}
    assert tcn_convs & kernels.keys() and other_convs & kernels.keys()
    assert all("f32" in kernels[n] and "bf16" not in kernels[n] for n in tcn_convs & kernels.keys())
    assert any("bf16" in kernels[n] for n in other_convs & kernels.keys())


def _scan_count(model: onnx.ModelProto) -> int:
    return sum(n.op_type == "SelectiveScan" for n in model.graph.node)


def test_openvino_lowers_every_mamba_convolution_into_its_scan(exports, guarded, windows, tmp_path):
    """The plugin engine runs Mamba-2's convolutions and gated norms inside the scans (no depthwise
    convolution or RMS norm is left in the IR), the narrow edge stream's input projections too, and still
    gives PyTorch's probes."""
    import xml.etree.ElementTree as ET

    x, expected, probes = windows
    built = BACKENDS["openvino"].build(exports["plugin"].model, "plugin", tmp_path, "fp32", [], (1, 1, 1),
                                       guarded.config, None)
    scans = _scan_count(onnx.load(str(exports["plugin"].model), load_external_data=False))
    assert built.settings["lowered_scans"] == built.settings["lowered_gated_norms"] == scans > 0
    # v3-small's edge stream (16 features, one layer, both directions) projects inside its two scans.
    edge_scans = 2 * guarded.config.edge_mamba.layers
    assert guarded.config.edge_mamba.d_model <= PROJECTED_MAX_FEATURES < guarded.config.node_mamba.d_model
    assert built.settings["lowered_projections"] == built.settings["lowered_out_projections"] == edge_scans
    # Each layer's backward direction, in both streams, runs backwards in the kernel instead of between two
    # flipped copies.
    node_layers, edge_layers = guarded.config.node_mamba.layers, guarded.config.edge_mamba.layers
    assert built.settings["reversed_scans"] == node_layers + edge_layers
    layers = list(ET.parse(tmp_path / "model.xml").getroot().iter("layer"))
    assert [layer.get("type") for layer in layers if layer.find("data") is not None
            and layer.find("data").get("reversed") == "true"].count("SelectiveScan") == node_layers
    assert "GroupConvolution" not in {layer.get("type") for layer in layers}
    # The first edge layer's u is the lifted similarity s w: its two scans read s and project it by w's
    # product with their input projection. Each layer's Linear over its two directions' concatenation is
    # absorbed into their output projections, whose sum replaces it: no Concat is left in either stack.
    assert built.settings["folded_lifts"] == 2
    assert built.settings["summed_directions"] == node_layers + edge_layers
    projected_features = sorted(int(layer.find("input")[0].findall("dim")[-1].text) for layer in layers
                                if layer.get("type") == "ProjectedSelectiveScan")
    assert projected_features == [1, 1] + [guarded.config.edge_mamba.d_model] * (edge_scans - 2)
    source = onnx.load(str(exports["plugin"].model), load_external_data=False).graph
    combined = {n.name for n in source.node if n.op_type == "Concat" and any(
        r.op_type == "MatMul" and r.input[0] == n.output[0] for r in source.node)}
    assert len(combined) == node_layers + edge_layers
    assert not combined & {layer.get("name") for layer in layers}
    # x, dt, A, B, C, D, dt_bias, the three convolutions' weights and biases, the norm's z and weight.
    assert [len(layer.find("input")) for layer in layers if layer.get("type") == "SelectiveScan"] == \
        [15] * (scans - edge_scans)
    # u, the projections' weights, A, D, dt_bias, the convolutions' weights and biases, the norm's weight.
    assert [len(layer.find("input")) for layer in layers if layer.get("type") == "ProjectedSelectiveScan"] == \
        [13] * edge_scans
    write_manifest(tmp_path, source={}, config=guarded.config, backend="openvino", precision="fp32", ops="plugin",
                   opset=18, model_file=built.model_file, pinned_nodes=built.pinned_nodes, settings=built.settings)
    outputs = _run(tmp_path, x, probes=True)
    for name in ("node_stream", "edge_weights"):  # the Mamba stacks' outputs
        np.testing.assert_allclose(outputs[name], probes[name], atol=PARITY_ATOL, rtol=0, err_msg=name)
    # Logits on the first window only: the spiked third has near-degenerate PE eigenvectors, whose basis
    # any fp32 engine may pick differently (the diff's basis_ambiguous).
    np.testing.assert_allclose(outputs["logits"][:1], expected[:1], atol=PARITY_ATOL, rtol=0)


@pytest.mark.parametrize("variant", ["unguarded", "lift that clips"])
def test_openvino_folds_the_edge_lift_only_where_it_is_linear(variant, windows, tmp_path):
    """The first edge layer projects the scalar similarity instead of its lift when u = s w exactly: always
    without guards, and with them only when the lift's clamp cannot bind (|s| <= 0.99 times max |w| inside
    +-3). A lift whose clamp binds is kept, and either way the engine's edge weights are PyTorch's."""
    model = _model(guards=False) if variant == "unguarded" else _model()
    x = torch.from_numpy(windows[0][:1])
    with torch.no_grad():
        _, probes = model(x, return_probes=True)
        if variant == "lift that clips":  # twice the clamp's reach at this window's largest similarity
            lift = model.edge_stream.lift.weight
            lift.mul_(2 * guards.LIFT_LIMIT / (lift.abs().max() * probes["edge_similarity"].abs().max()))
            _, probes = model(x, return_probes=True)
    export = export_onnx(model, tmp_path / "onnx", "plugin")
    _reference_manifest(export, model)
    engine = tmp_path / "openvino"
    built = BACKENDS["openvino"].build(export.model, "plugin", engine, "fp32", [], (1, 1, 1), model.config, None)
    assert built.settings["folded_lifts"] == (2 if variant == "unguarded" else 0)
    write_manifest(engine, source={}, config=model.config, backend="openvino", precision="fp32", ops="plugin",
                   opset=18, model_file=built.model_file, pinned_nodes=built.pinned_nodes, settings=built.settings)
    outputs = _run(engine, x.numpy(), probes=True)
    tolerance = PARITY_ATOL
    if variant == "lift that clips":  # the clamp binds on this window: a fold would be wrong here
        lifted = model.edge_stream.lift(probes["edge_similarity"].unsqueeze(-1))
        assert (lifted.abs() > guards.LIFT_LIMIT).any()
        tolerance *= 5  # the enlarged lift enlarges the similarity's rounding (a wrong fold errs by 1e-3)
    np.testing.assert_allclose(outputs["edge_weights"], probes["edge_weights"].numpy(), atol=tolerance, rtol=0)


def test_openvino_runs_each_batch_size_compiled_for_its_static_shape(exports, guarded, windows, tmp_path):
    """The runner compiles the dynamic-batch IR once per feed shape (OpenVINO then plans its memory once instead
    of allocating it at every inference), keeps the two most recent, and any batch gives the same logits as
    one window at a time; a third shape drops the least recently used."""
    from brr.backends.openvino.runner import SHAPES_KEPT

    x, _, _ = windows
    built = BACKENDS["openvino"].build(exports["standard"].model, "standard", tmp_path, "fp32", [], (1, 1, 1),
                                       guarded.config, None)
    write_manifest(tmp_path, source={}, config=guarded.config, backend="openvino", precision="fp32", ops="standard",
                   opset=18, model_file=built.model_file, pinned_nodes=built.pinned_nodes, settings=built.settings)
    with load_runner(tmp_path) as runner:
        assert runner.get_input_metadata()["eeg"].shape[0] == -1  # the IR keeps its dynamic batch
        one_by_one = np.concatenate([runner.infer({"eeg": x[i:i + 1]})["logits"] for i in range(len(x))])
        together = runner.infer({"eeg": x})["logits"]
        assert [dict(shapes)["eeg"][0] for shapes in runner.compiled_for] == [1, len(x)]
        runner.infer({"eeg": x[:2]})
        assert SHAPES_KEPT == 2 and [dict(shapes)["eeg"][0] for shapes in runner.compiled_for] == [len(x), 2]
    # The spiked third window's near-degenerate PE eigenvectors may take another basis in another compilation.
    np.testing.assert_allclose(together[:2], one_by_one[:2], atol=1e-5, rtol=0)


def test_a_convolution_read_elsewhere_stays_outside_its_scan(exports):
    """A convolution whose output is also a graph output (a probe someone added) is not lowered: its scan
    keeps its inputs, the other scans are lowered, and the output is still made."""
    from brr.backends.openvino.lowering import LOWERED_OP, PROJECTED_OP, lower_for_openvino

    model = onnx.load(str(exports["plugin"].model))
    scans = _scan_count(model)
    conv = next(n for n in model.graph.node if n.op_type == "Conv" and any(
        a.name == "group" and a.i > 1 for a in n.attribute))
    model.graph.output.append(onnx.helper.make_tensor_value_info(conv.output[0], onnx.TensorProto.FLOAT, None))
    lowered, counts = lower_for_openvino(model, fp32_everywhere=True)
    # v3-small's TCN dilates at most 8x: no convolution runs on phases.
    assert {k: counts[k] for k in ("phased_convolutions", "lowered_scans", "lowered_gated_norms")} == \
        {"phased_convolutions": 0, "lowered_scans": scans - 1, "lowered_gated_norms": scans - 1}
    lowered_ops = [n.op_type for n in lowered.graph.node]
    assert lowered_ops.count(LOWERED_OP) + lowered_ops.count(PROJECTED_OP) == scans - 1 and _scan_count(lowered) == 1
    assert any(n.op_type == "Conv" and conv.output[0] in n.output for n in lowered.graph.node)


def _weight_shape(model: onnx.ModelProto, matmul: onnx.NodeProto) -> tuple[int, ...]:
    return next(tuple(i.dims) for i in model.graph.initializer if i.name == matmul.input[1])


@pytest.mark.parametrize("probed", ["flipped input", "output before its flip back"])
def test_a_flip_read_elsewhere_keeps_its_scan_forwards(exports, guarded, probed):
    """A node layer's flipped input, or its output projection before the flip back, that is also a graph output
    (a probe) keeps both flips: that scan runs forwards between them, the other backward directions backwards
    in the kernel."""
    from brr.backends.openvino.lowering import lower_for_openvino

    model = onnx.load(str(exports["plugin"].model))
    producer = {output: n for n in model.graph.node for output in n.output}
    readers = {}
    for n in model.graph.node:
        for name in n.input:
            readers.setdefault(name, []).append(n)
    node_features = guarded.config.node_mamba.d_model
    flips = [n for n in model.graph.node if n.op_type == "Slice"]
    if probed == "flipped input":  # a flip read by the node stream's in_proj MatMuls
        probe = next(f.output[0] for f in flips if all(
            r.op_type == "MatMul" and _weight_shape(model, r)[0] == node_features for r in readers[f.output[0]]))
    else:  # the node stream's out_proj MatMul that a flip reads
        probe = next(f.input[0] for f in flips if producer[f.input[0]].op_type == "MatMul"
                     and _weight_shape(model, producer[f.input[0]])[1] == node_features)
    model.graph.output.append(onnx.helper.make_tensor_value_info(probe, onnx.TensorProto.FLOAT, None))
    lowered, counts = lower_for_openvino(model, fp32_everywhere=True)
    assert counts["reversed_scans"] == guarded.config.node_mamba.layers + guarded.config.edge_mamba.layers - 1
    flipped = [n for n in lowered.graph.node if n.op_type == "Slice"]
    assert len(flipped) == len(flips) - 2 * counts["reversed_scans"] and probe in {o.name for o in lowered.graph.output}


def test_a_projection_read_elsewhere_stays_outside_its_scan(exports, guarded):
    """An input projection whose output is also a graph output (a probe on the edge stream's dt) stays a
    MatMul: its scan is lowered with its convolutions and norm but reads the projections; the other narrow
    scans still project inside."""
    from brr.backends.openvino.lowering import LOWERED_OP, PROJECTED_OP, lower_for_openvino

    model = onnx.load(str(exports["plugin"].model))
    edge_scans = 2 * guarded.config.edge_mamba.layers
    scans = _scan_count(model)
    producer = {output: n for n in model.graph.node for output in n.output}
    edge_scan = next(n for n in model.graph.node if n.op_type == "SelectiveScan"
                     and producer[n.input[1]].op_type == "MatMul"
                     and onnx.numpy_helper.to_array(next(i for i in model.graph.initializer
                                                         if i.name == producer[n.input[1]].input[1])).shape[0]
                     <= PROJECTED_MAX_FEATURES)
    model.graph.output.append(onnx.helper.make_tensor_value_info(edge_scan.input[1], onnx.TensorProto.FLOAT, None))
    lowered, counts = lower_for_openvino(model, fp32_everywhere=True)
    assert counts["lowered_scans"] == counts["lowered_gated_norms"] == scans
    assert counts["lowered_projections"] == counts["lowered_out_projections"] == edge_scans - 1
    ops = {n.name: n.op_type for n in lowered.graph.node}
    assert ops[edge_scan.name] == LOWERED_OP and list(ops.values()).count(PROJECTED_OP) == edge_scans - 1
    assert edge_scan.input[1] in {o.name for o in lowered.graph.output}


def test_a_combining_linear_pinned_apart_from_its_directions_stays(exports, guarded):
    """A layer's Linear over its two directions' concatenation that a precision plan keeps in fp32 while their
    output projections may run in bf16 stays where it is: absorbing it would move its products to bf16. The
    other layers' are still absorbed, and an fp32 engine absorbs every one."""
    from brr.backends.openvino.lowering import lower_for_openvino

    model = onnx.load(str(exports["plugin"].model))
    concats = {n.output[0] for n in model.graph.node if n.op_type == "Concat"}
    combining = [n.name for n in model.graph.node if n.op_type == "MatMul" and n.input[0] in concats]
    layers = guarded.config.node_mamba.layers + guarded.config.edge_mamba.layers
    assert len(combining) == layers
    _, counts = lower_for_openvino(model, fp32_everywhere=False, fp32_nodes=combining[:1])
    assert counts["summed_directions"] == layers - 1
    _, counts = lower_for_openvino(model, fp32_everywhere=True, fp32_nodes=combining[:1])
    assert counts["summed_directions"] == layers


def test_precision_plan_refuses_unknown_nodes(exports, tmp_path):
    plan_file = tmp_path / "plan.json"
    plan_file.write_text(json.dumps({"fp32_nodes": ["no_such_node"]}))
    with pytest.raises(PrecisionPlanError, match="no_such_node"):
        PrecisionPlan.load(plan_file).resolve(exports["standard"].model, {})
    plan_file.write_text(json.dumps({"fp32_stages": ["tcnn"]}))
    with pytest.raises(PrecisionPlanError, match="tcnn"):
        PrecisionPlan.load(plan_file)
    plan_file.write_text(json.dumps({"int8_stages": ["tcnn"]}))
    with pytest.raises(PrecisionPlanError, match=r"int8_stages has unknown stage\(s\) \['tcnn'\]"):
        PrecisionPlan.load(plan_file)
    plan_file.write_text(json.dumps({"int8_stages": ["tcn"], "unquantized_precision": "fp16"}))
    with pytest.raises(PrecisionPlanError, match="unquantized_precision must be one of"):
        PrecisionPlan.load(plan_file)
    # An int8 scope asked of another engine would be silently ignored: refused, naming the plan.
    plan_file.write_text(json.dumps({"int8_stages": ["tcn"]}))
    with pytest.raises(PrecisionPlanError, match="it is for int8 engines, not bf16"):
        engine_plan(plan_file, "bf16")


def test_a_shipped_plan_is_asked_for_by_name(exports, tmp_path):
    """--precision-plan bf16-fp32-tcn: the default bf16 islands plus every node of the TCN encoder and
    its electrode projection; a name that is neither a file nor one of brr's plans is refused, naming them."""
    stages = json.loads(exports["plugin"].stages.read_text())
    default = set(default_plan("bf16").resolve(exports["plugin"].model, stages))
    plan = engine_plan("bf16-fp32-tcn", "bf16")
    pinned = set(plan.resolve(exports["plugin"].model, stages))
    encoder = {n for n, stage in stages.items() if stage in ("tcn", "electrodes")}
    assert plan.name == "bf16-fp32-tcn" and encoder and default
    assert pinned == default | encoder
    with pytest.raises(PrecisionPlanError, match="bf16-fp32-tcn"):
        engine_plan("bf16-fp32-tnc", "bf16")
    with pytest.raises(PrecisionPlanError, match="not found"):
        engine_plan(tmp_path / "plan.json", "bf16")


def test_tampered_artifact_is_refused(exports, tmp_path):
    copy = shutil.copytree(exports["standard"].directory, tmp_path / "artifact")
    verify_manifest(copy)
    data = bytearray((copy / ONNX_FILE).read_bytes())
    data[-10] ^= 0xFF
    (copy / ONNX_FILE).write_bytes(bytes(data))
    with pytest.raises(ManifestError, match=f"{ONNX_FILE} does not match"):
        load_runner(copy)
    (copy / ONNX_FILE).unlink()
    with pytest.raises(ManifestError, match="missing"):
        verify_manifest(copy)
    with pytest.raises(ManifestError, match="no manifest.json"):
        load_runner(tmp_path)


def test_load_runner_picks_torch_for_checkpoints(guarded, tmp_path):
    save_checkpoint(guarded, tmp_path)
    assert isinstance(load_runner(tmp_path), TorchRunner)


def test_verify_engine_runs_the_diff_and_keeps_its_report(exports, guarded, tmp_path):
    result = verify_engine(guarded, exports["standard"].directory, "fp32", tmp_path, 15360, synthetic_windows=1)
    report = json.loads((tmp_path / "report.json").read_text())
    assert result.passed and report["verdict"] == result.verdict
    assert report["inputs"][0] == "synthetic-0" and "all_zero" in report["inputs"]
    assert "pass" in result.summary()
    recorded = read_manifest(exports["standard"].directory)["verification"]
    assert recorded["passed"] and recorded["model_sha256"] == read_manifest(exports["standard"].directory)["files"][
        ONNX_FILE]


def _nodes_on_weights_alone(path):
    graph = onnx.load(str(path)).graph
    constants = {i.name for i in graph.initializer} | {o for n in graph.node if n.op_type == "Constant" for o in n.output}
    return [n for n in graph.node if n.input and all(not i or i in constants for i in n.input)]


@pytest.mark.slow
@pytest.mark.parametrize("ops, guards, dynamic_pe", [
    ("standard", True, True), ("plugin", False, True), ("standard", False, False), ("plugin", True, False),
])
def test_v3_ort_fp32_matches_pytorch(tmp_path, ops, guards, dynamic_pe, monkeypatch):
    """Every probe within PARITY_ATOL, judged by the diff's comparator: a top-k selection that flips
    at a near-tie (fp32 rounding noise decides between two equal edges, the hazard the architecture
    names) is two correct answers, and the stages after it inherit that difference (~1e-2 at the
    logits when one of the 960 x 19 rows flips). Anything else must match to PARITY_ATOL.

    PyTorch runs the scan's chunked reference here, the computation both ONNX forms spell out: the
    native kernel's sequential rounding (held to the reference in tests/ops/test_selective_scan.py) is
    as exact, but on this random v3 it moves near-degenerate eigenvectors of the PE past PARITY_ATOL."""
    monkeypatch.setenv(selective_scan_native.KERNEL_ENV, "reference")
    torch.manual_seed(1)
    model = build_detector("v3", guards=guards).eval() if dynamic_pe else \
        build_detector({"base": "v3", "use_dynamic_pe": False, "guards": guards}).eval()
    cfg = model.config
    export = export_onnx(model, tmp_path, ops)
    _reference_manifest(export, model)
    # v3's projection weights are sliced per consumer, beyond the size the exporter folds: every view of
    # a weight must be an initializer, while arithmetic on weights (weight norm) stays the engine's.
    on_weights = {n.op_type for n in _nodes_on_weights_alone(export.model)}
    assert not on_weights & {"Slice", "Transpose", "Reshape", "Concat"} and "ReduceL2" in on_weights
    x = torch.randn(3, 19, 15360)
    with torch.no_grad():
        _, probes = model(x, return_probes=True)
    for batch in (1, 3):
        ref = {k: v[:batch].numpy() for k, v in probes.items()}
        spectrum = None
        if dynamic_pe:
            spectrum = reference_spectrum(ref["adjacency"], cfg.semi_dynamic_interval, cfg.degree_clamp,
                                          cfg.laplacian_shift)
        engine = _run(export.model, x[:batch].numpy(), probes=True)
        result = compare_outputs("v3", {"eeg": x[:batch].numpy()}, ref, engine, spectrum, PARITY_ATOL, PARITY_ATOL,
                                 cfg.edge_top_k)
        assert result.verdict in ("clean", "basis_ambiguous"), (result.verdict, result.first_divergent_stage)
        if result.stages["adjacency"].status == "clean":
            assert np.abs(engine["logits"] - ref["logits"]).max() <= PARITY_ATOL


def test_diff_pairs_each_fp16_artifact_with_the_fp32_export_of_its_ops_mode(exports, guarded, tmp_path):
    from brr.diff import artifact_engines

    paths = []
    for ops, export in exports.items():
        engine_dir = tmp_path / f"fp16-{ops}"
        built = BACKENDS["onnxruntime"].build(export.model, ops, engine_dir, "fp16", [], (1, 1, 1), guarded.config,
                                              None)
        write_manifest(engine_dir, source={}, config=guarded.config, backend="onnxruntime", precision="fp16",
                       ops=ops, opset=18, model_file=built.model_file, pinned_nodes=built.pinned_nodes,
                       fp32_reference=export.directory)
        paths += [export.directory, engine_dir]
    given = {e.name: e for e in artifact_engines(paths)}
    # Without the fp32 artifacts on the command line, each engine's manifest names its own.
    alone = {e.name: e for e in artifact_engines([p for p in paths if p.name.startswith("fp16-")])}
    for ops, export in exports.items():
        expected = onnx.load(str(export.model), load_external_data=False)
        for engines in (given, alone):
            fp32_graph = engines[f"fp16-{ops}"].fp32_model
            assert [n.op_type for n in fp32_graph.graph.node] == [n.op_type for n in expected.graph.node]
    moved = tmp_path / "moved"
    shutil.copytree(tmp_path / "fp16-standard", moved / "fp16-standard")
    (engine,) = artifact_engines([moved / "fp16-standard"])
    assert engine.fp32_model is None and "node level skipped" in engine.node_level_note
    assert "onnx-standard" in engine.node_level_note or "cannot be used" in engine.node_level_note
