"""OpenVINO (CPU, bf16 where the CPU has it): compiles and fuses its own graph, so the diff compares its probes."""

from __future__ import annotations

from brr.backends.base import Backend, BuiltEngine, selected_outputs
from brr.backends.openvino.loader import MODEL_FILE, CompiledModel, build_engine, openvino_extensions
from brr.backends.openvino.runner import OpenVINORunner


class OpenVINO(Backend):
    name = "openvino"
    model_file = MODEL_FILE
    node_level_unavailable = (
        "node level not available for openvino: it compiles and fuses its own graph from the ONNX, so its "
        "intermediate tensors are not the ONNX graph's; compared at its probes (export an ONNX Runtime engine of "
        "the same precision to localise node by node)")

    def build(self, onnx_path, ops, directory, precision, fp32_nodes, batch, config, calibration):
        pinned, settings = build_engine(onnx_path, ops, directory, precision, fp32_nodes)
        return BuiltEngine(MODEL_FILE, pinned, settings)

    def runner(self, model, manifest, probes=False, name=None, device="cpu", threads=None, lean=False):
        compiled = CompiledModel(model, manifest["settings"]["inference_precision"], threads=threads,
                                 extensions=openvino_extensions(manifest.get("ops", "standard")))
        return OpenVINORunner(compiled, name=name, outputs=selected_outputs(probes))


OPENVINO = OpenVINO()
