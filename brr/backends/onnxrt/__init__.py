"""ONNX Runtime (CPU; CUDA with the GPU extras): the engine is an ONNX graph, so the diff edits it directly."""

from __future__ import annotations

import onnx
from google.protobuf.message import DecodeError

from brr.backends.base import Backend, BuiltEngine, EditedGraphs, selected_outputs
from brr.backends.onnxrt.loader import MODEL_FILE, build_engine
from brr.backends.onnxrt.runner import lean_onnxruntime_runner, onnxruntime_runner
from brr.errors import InputError


class OnnxRuntime(Backend):
    name = "onnxruntime"
    model_file = MODEL_FILE

    def build(self, onnx_path, ops, directory, precision, fp32_nodes, batch, config, calibration):
        settings = build_engine(onnx_path, ops, directory, precision, fp32_nodes, calibration)
        return BuiltEngine(MODEL_FILE, fp32_nodes, settings)

    def runner(self, model, manifest, probes=False, name=None, device="cpu", threads=None, lean=False):
        return onnxruntime_runner(model, name=name, device=device, threads=threads, outputs=selected_outputs(probes),
                                  lean=lean)

    def part_runner(self, model, part, probes=False, name=None, device="cpu", threads=None):
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
