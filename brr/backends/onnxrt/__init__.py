"""ONNX Runtime (CPU; CUDA with the GPU extras): the engine is an ONNX graph, so the diff edits it directly."""

from __future__ import annotations

import onnx
from google.protobuf.message import DecodeError

from brr.backends.base import (
    Backend,
    BuiltEngine,
    EditedGraphs,
    EngineBuildError,
    plain_int8_windows,
    selected_outputs,
)
from brr.backends.onnxrt.loader import MODEL_FILE, build_engine
from brr.backends.onnxrt.runner import lean_onnxruntime_runner, onnxruntime_runner
from brr.errors import InputError


class OnnxRuntime(Backend):
    name = "onnxruntime"
    model_file = MODEL_FILE

    def build(self, onnx_path, ops, directory, precision, fp32_nodes, batch, config, calibration):
        settings = build_engine(onnx_path, ops, directory, precision, fp32_nodes,
                                plain_int8_windows("ONNX Runtime", calibration))
        return BuiltEngine(MODEL_FILE, fp32_nodes, settings)

    def runner(self, model, manifest, probes=False, name=None, device="cpu", threads=None, lean=False):
        return onnxruntime_runner(model, name=name, device=device, threads=threads, outputs=selected_outputs(probes),
                                  lean=lean)

    def check_split(self, precision):
        if precision == "int8":
            # Calibrating the rest would need the front's features of the calibration windows as its input.
            raise EngineBuildError("ONNX Runtime int8 engines are built for the whole detector only, not split "
                                   "into front and rest; export int8 without --split, or on OpenVINO")

    def build_part(self, onnx_path, part, ops, directory, precision, fp32_nodes, calibration=None):
        self.check_split(precision)
        model_file = f"{part.value}.onnx"
        settings = build_engine(onnx_path, ops, directory, precision, fp32_nodes, model_file=model_file)
        return BuiltEngine(model_file, fp32_nodes, settings)

    def part_runner(self, model, part, manifest, probes=False, name=None, device="cpu", threads=None):
        return onnxruntime_runner(model, name=name, device=device, threads=threads,
                                  outputs=None if probes else [part.output_name])

    def edited_graphs(self, directory, manifest, fp32_model):
        path = directory / manifest["model_file"]
        try:
            graph = onnx.load(str(path))
        except (OSError, DecodeError) as error:
            raise InputError(f"{path}: not a readable ONNX model ({error})") from None
        return EditedGraphs(graph, lean_onnxruntime_runner)


ONNXRUNTIME = OnnxRuntime()
