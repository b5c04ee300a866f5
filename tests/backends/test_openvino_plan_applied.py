"""OpenVINO's "plan applied" check: the compiled model's execution graph, read back after a bf16 build."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import openvino as ov
import pytest

from brr.artifact.manifest import read_manifest, write_manifest
from brr.backends import BACKENDS
from brr.backends.base import EngineBuildError
from brr.backends.openvino.execution import ExecutedNode, PlanCheck, check_plan_applied, execution_graph
from brr.backends.openvino.loader import CompiledModel, openvino_extensions
from brr.export.precision_plan import load_plan

CAPABILITIES = ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
NATIVE_BF16 = "BF16" in CAPABILITIES
BF16_PLANS = ("bf16", "bf16-fp32-tcn")


def _planted():
    """An execution graph as rt_info documents: the pinned norm ran in fp32, its gate fused into a bf16 MatMul."""
    docs = [("in_proj", {"layerType": "FullyConnected", "runtimePrecision": "bf16",
                         "originalLayersNames": "node_linear,node_silu_3"}),
            ("norm", {"layerType": "Eltwise", "runtimePrecision": "f32", "originalLayersNames": "node_mul_151"}),
            ("mask", {"layerType": "Eltwise", "runtimePrecision": "u8", "originalLayersNames": "node_where"}),
            ("reorder", {"layerType": "Reorder", "runtimePrecision": "f32", "originalLayersNames": ""})]
    return [ExecutedNode.from_rt_info(name, doc) for name, doc in docs]


def test_rt_info_is_read_into_execution_nodes():
    in_proj, _, _, reorder = _planted()
    assert in_proj == ExecutedNode("in_proj", "FullyConnected", "bf16", ("node_linear", "node_silu_3"))
    assert reorder.original_layers == ()


def test_a_pinned_layer_that_ran_in_bf16_fails_naming_it():
    pinned = {"node_mul_151": "node_mul_151", "node_silu_3/Swish": "node_silu_3", "node_where": "node_where"}
    passed = check_plan_applied(_planted(), pinned, "bf16", ["BF16", "FP32"])
    assert passed["verdict"] == PlanCheck.APPLIED.value and passed["pinned_layers_executed"] == 2
    pinned["node_silu_3"] = "node_silu_3"
    with pytest.raises(EngineBuildError, match=r"node_silu_3 \(ONNX node node_silu_3\) ran in bf16 in execution "
                                               r"node in_proj \(FullyConnected\)"):
        check_plan_applied(_planted(), pinned, "bf16", ["BF16"])


def test_a_pinned_value_moved_in_bf16_fails_only_where_a_pinned_layer_computes_on_it():
    """The plugin converts a pinned convolution's output to bf16 before the reshape leading to a bf16 consumer:
    the rounding the plan makes there anyway. Leading to a pinned consumer, it is a rounding the plan forbids."""
    def graph(consumer_layer: str):
        docs = [("conv", {"layerType": "Convolution", "runtimePrecision": "f32", "originalLayersNames": "conv0"},
                 ["to_bf16"]),
                ("to_bf16", {"layerType": "Reorder", "runtimePrecision": "f32", "originalLayersNames": ""},
                 ["phase_outputs"]),
                ("phase_outputs", {"layerType": "Reshape", "runtimePrecision": "bf16",
                                   "originalLayersNames": "conv0/phase_outputs"}, ["next"]),
                ("next", {"layerType": "Convolution", "runtimePrecision": "bf16" if consumer_layer == "conv1" else "f32",
                          "originalLayersNames": consumer_layer}, [])]
        return [ExecutedNode.from_rt_info(name, doc, consumers) for name, doc, consumers in docs]

    pinned = {"conv0": "conv0", "conv0/phase_outputs": "conv0", "relu0": "relu0"}
    assert check_plan_applied(graph("conv1"), pinned, "bf16", ["BF16"])["verdict"] == PlanCheck.APPLIED.value
    with pytest.raises(EngineBuildError, match=r"conv0/phase_outputs \(ONNX node conv0\) ran in bf16"):
        check_plan_applied(graph("relu0"), pinned, "bf16", ["BF16"])


def test_a_cpu_without_bf16_passes_trivially_and_says_so():
    fp32_only = [ExecutedNode(n.name, n.layer_type, "f32", n.original_layers) for n in _planted()]
    recorded = check_plan_applied(fp32_only, {"node_silu_3": "node_silu_3"}, "bf16", ["FP32", "INT8"])
    assert recorded["verdict"] == PlanCheck.TRIVIAL.value and recorded["cpu_has_it"] is False
    assert recorded["reduced_precision_nodes"] == 0


@pytest.mark.parametrize("plan", BF16_PLANS)
def test_a_bf16_plugin_build_applies_the_shipped_plan(small_exports, small_model, tmp_path, plan):
    export = small_exports["plugin"]
    pinned = load_plan(plan).resolve(export.model, json.loads(export.stages.read_text()))
    built = BACKENDS["openvino"].build(export.model, "plugin", tmp_path, "bf16", pinned, (1, 1, 1),
                                       small_model.config, None)
    write_manifest(tmp_path, source={}, config=small_model.config, backend="openvino", precision="bf16",
                   ops="plugin", opset=export.opset, model_file=built.model_file, pinned_nodes=built.pinned_nodes,
                   settings=built.settings)
    recorded = read_manifest(tmp_path)["settings"]["plan_applied"]
    print(f"\n{plan}: {recorded}")
    assert recorded["verdict"] == (PlanCheck.APPLIED if NATIVE_BF16 else PlanCheck.TRIVIAL).value
    assert recorded["pinned_layers_executed"] > 0
    assert recorded["pinned_layers"] == built.settings["fp32_layers"]
    if not NATIVE_BF16:
        return
    assert recorded["reduced_precision_nodes"] > 0  # the hint took effect elsewhere
    # The same IR without its marks: the check sees the pinned layers run in bf16.
    tree = ET.parse(tmp_path / "model.xml")
    marked = {}
    for layer in tree.getroot().iter("layer"):
        for rt_info in layer.findall("rt_info"):
            for attribute in rt_info.findall("attribute"):
                if attribute.get("name") == "precise":
                    rt_info.remove(attribute)
                    marked[layer.get("name")] = layer.get("name")
    tree.write(tmp_path / "model.xml", encoding="utf-8", xml_declaration=True)
    compiled = CompiledModel(tmp_path / "model.xml", "bf16", extensions=openvino_extensions("plugin"))()
    with pytest.raises(EngineBuildError, match="ran in bf16"):
        check_plan_applied(execution_graph(compiled), marked, "bf16", CAPABILITIES)


@pytest.mark.skipif(not NATIVE_BF16, reason="the CPU has no bf16: OpenVINO runs every layer in fp32 and no plan can fail")
def test_a_standard_ops_bf16_build_whose_norms_openvino_rewrites_fails_naming_them(small_exports, small_model,
                                                                                   tmp_path):
    """In a standard-ops graph OpenVINO fuses the pinned gated norms into bf16 nodes, whatever the IR marks say:
    the build fails, names a pinned node, and says which export keeps the plan."""
    export = small_exports["standard"]
    pinned = load_plan("bf16").resolve(export.model, json.loads(export.stages.read_text()))
    with pytest.raises(EngineBuildError, match=r"plan was not applied: .* ran in bf16 .*--ops plugin"):
        BACKENDS["openvino"].build(export.model, "standard", tmp_path, "bf16", pinned, (1, 1, 1), small_model.config,
                                   None)
