"""Scans typed bf16 where OpenVINO stores the tensors around them in bf16 anyway (``scan_storage``)."""

from __future__ import annotations

import json

import numpy as np
import openvino as ov
import pytest
import torch

from brr.backends import BACKENDS
from brr.backends.openvino.loader import CompiledModel, openvino_extensions
from brr.backends.openvino.scan_storage import ACTIVATION_INPUTS, ScanNeighbours, scan_neighbours
from brr.export.precision_plan import load_plan
from brr.model.contract import OUTPUT_NAME
from brr.tolerances import TOLERANCES

NATIVE_BF16 = "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def test_a_scan_is_typed_bf16_only_where_its_inputs_and_output_are_bf16_already():
    assert ScanNeighbours("node", (True, True, True), True).bf16_for_free
    assert not ScanNeighbours("edge", (False,), True).bf16_for_free  # reads an fp32 tensor
    assert not ScanNeighbours("probe", (True, True), False).bf16_for_free  # an output read in fp32


@pytest.mark.skipif(not NATIVE_BF16, reason="the CPU has no bf16: OpenVINO stores nothing in bf16 around a scan")
def test_a_bf16_plugin_build_runs_its_node_scans_on_bf16_without_copies(small_exports, small_model, tmp_path):
    export = small_exports["plugin"]
    pinned = load_plan("bf16").resolve(export.model, json.loads(export.stages.read_text()))
    built = BACKENDS["openvino"].build(export.model, "plugin", tmp_path, "bf16", pinned, (1, 1, 1),
                                       small_model.config, None)
    extensions = openvino_extensions("plugin")
    core = ov.Core()
    for extension in extensions:
        core.add_extension(extension)
    model = core.read_model(str(tmp_path / built.model_file))
    scans = [op for op in model.get_ordered_ops() if op.get_type_name() in ACTIVATION_INPUTS]
    typed = {op.get_friendly_name() for op in scans if op.get_output_element_type(0) == ov.Type.bf16}
    # The node stream's scans read its bf16 projections; the edge stream's read the fp32 edge similarity.
    assert built.settings["scans_stored_in_bf16"] == len(typed) > 0
    assert all(op.get_type_name() == "SelectiveScan" for op in scans if op.get_friendly_name() in typed)
    assert any(op.get_type_name() == "ProjectedSelectiveScan" and op.get_friendly_name() not in typed for op in scans)
    compiled = CompiledModel(tmp_path / built.model_file, "bf16", extensions=extensions)()
    for scan in scan_neighbours(model, compiled):
        if scan.name in typed:  # nothing converts its tensors any more
            assert not any(scan.inputs_stored_in_bf16) and not scan.output_read_in_bf16, scan
    window = torch.randn(1, 19, small_model.config.window_samples, generator=torch.Generator().manual_seed(3)) * 20
    with torch.inference_mode():
        reference = small_model(window).numpy()
    logits = compiled({"eeg": window.numpy()})[OUTPUT_NAME]
    atol, rtol = TOLERANCES["bf16"]
    np.testing.assert_allclose(logits, reference, atol=atol, rtol=rtol)
