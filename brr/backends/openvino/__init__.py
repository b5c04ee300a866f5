"""OpenVINO (CPU, bf16 where the CPU has it): compiles and fuses its own graph from the ONNX; the diff reads the
tensors it keeps under their ONNX names as extra outputs of its model (``probing``)."""

from __future__ import annotations

from brr.backends.base import Backend, BuiltEngine, EditedGraphs, Int8Scope, selected_outputs
from brr.backends.openvino.loader import (
    MODEL_FILE,
    CompiledModel,
    build_engine,
    openvino_extensions,
    weights_file,
)
from brr.backends.openvino.probing import OpenVINOTensors
from brr.backends.openvino.quantize import import_nncf
from brr.backends.openvino.runner import OpenVINORunner
from brr.model.contract import INPUT_NAME, GraphPart


class OpenVINO(Backend):
    name = "openvino"
    model_file = MODEL_FILE

    def build(self, onnx_path, ops, directory, precision, fp32_nodes, batch, config, calibration):
        validation = None
        if precision == "int8":
            import_nncf()  # before any work
            from brr.diff.inputs import verification_windows  # the diff imports the backends

            if calibration is not None:
                validation = list(calibration.windows) + [feed[INPUT_NAME] for feed in
                                                          verification_windows(config.window_samples)]
        pinned, settings = build_engine(onnx_path, ops, directory, precision, fp32_nodes, calibration=calibration,
                                        validation=validation)
        return BuiltEngine(MODEL_FILE, pinned, settings)

    def check_split(self, precision):
        """Every precision splits: an int8 front is quantized on the layers the whole engine kept int8."""

    def build_part(self, onnx_path, part, ops, directory, precision, fp32_nodes, calibration=None):
        model_file = f"{part.value}.xml"
        if precision == "int8" and part is GraphPart.REST:
            # The int8 plans quantize the TCN, which is in the front: the rest runs as the whole engine's
            # unquantized layers do (the bf16 engine's, pinned alike, where the plan says bf16).
            precision = (calibration.scope if calibration else Int8Scope()).unquantized_precision
        # An int8 front quantizes the layers the whole engine's validation chose (``fp32_nodes`` keeps the
        # others) without validating again: the verification of the composed parts judges it.
        pinned, settings = build_engine(onnx_path, ops, directory, precision, fp32_nodes, model_file=model_file,
                                        calibration=calibration)
        return BuiltEngine(model_file, pinned, settings, companion_files=(weights_file(model_file),))

    def runner(self, model, manifest, probes=False, name=None, device="cpu", threads=None, lean=False):
        compiled = CompiledModel(model, manifest["settings"]["inference_precision"], threads=threads,
                                 extensions=openvino_extensions(manifest.get("ops", "standard")))
        return OpenVINORunner(compiled, name=name, outputs=selected_outputs(probes))

    def part_runner(self, model, part, manifest, probes=False, name=None, device="cpu", threads=None):
        compiled = CompiledModel(model, manifest["settings"]["inference_precision"], threads=threads,
                                 extensions=openvino_extensions(manifest.get("ops", "standard")))
        return OpenVINORunner(compiled, name=name, outputs=None if probes else [part.output_name])

    def edited_graphs(self, directory, manifest, fp32_model):
        """The fp32 graph the IR was converted from, its tensors read where the IR keeps them: the engine's
        model compiled as the runner compiles it, with them as extra outputs."""
        tensors = OpenVINOTensors(CompiledModel(directory / manifest["model_file"],
                                                manifest["settings"]["inference_precision"],
                                                extensions=openvino_extensions(manifest.get("ops", "standard"))))
        return EditedGraphs(fp32_model, tensors.runner_for, tensors)


OPENVINO = OpenVINO()
