"""TensorRT (CUDA GPU, ``pip install .[gpu]``, TensorRT 10.12 to 11.x): strongly typed engines of the typed
graph the artifact keeps beside them; the diff reads the served engine's probes and a rebuild's tensors as
debug tensors. Without TensorRT, an export still writes the typed graph and the trtexec lines that build it."""

from __future__ import annotations

from brr.backends.base import Backend, BuiltEngine, EditedGraphs, plain_int8_windows
from brr.backends.trt.loader import (
    MODEL_FILE,
    TIMING_CACHE_FILE,
    PluginImplementation,
    TensorRTBuild,
    TensorRTRebuild,
    build_engine,
    import_tensorrt,
    prepare_engine,
    version_major,
)
from brr.backends.trt.runner import tensorrt_runner
from brr.backends.trt.trtexec import printed_lines
from brr.model.contract import OUTPUT_NAME


class TensorRT(Backend):
    name = "tensorrt"
    model_file = MODEL_FILE
    batch_profile = True
    builds_offline = True

    def require(self):
        import_tensorrt()

    def build(self, onnx_path, ops, directory, precision, fp32_nodes, batch, config, calibration):
        settings = build_engine(onnx_path, ops, directory, precision, fp32_nodes, batch, config.n_channels,
                                config.window_samples, plain_int8_windows("TensorRT", calibration))
        return BuiltEngine(MODEL_FILE, fp32_nodes, settings)

    def prepare(self, onnx_path, ops, directory, precision, fp32_nodes, batch, config, calibration, missing):
        settings = prepare_engine(onnx_path, ops, directory, precision, fp32_nodes, batch, config.n_channels,
                                  config.window_samples, plain_int8_windows("TensorRT", calibration))
        return BuiltEngine(MODEL_FILE, fp32_nodes, settings, unbuilt=missing)

    def commands(self, settings, export_command):
        version = settings.get("tensorrt_version")
        jit = [plugin for plugin, kind in settings.get("plugins", {}).items() if kind == PluginImplementation.JIT.value]
        return printed_lines(settings["trtexec"], version_major(version) if version else None, export_command, jit)

    def runner(self, model, manifest, probes=False, name=None, device="cpu", threads=None, lean=False):
        wanted = [probe for probe in manifest["probes"] if probe != OUTPUT_NAME] if probes else []
        return tensorrt_runner(model, name=name, probes=wanted)

    def edited_graphs(self, directory, manifest, fp32_model):
        """Rebuilt from the artifact's typed graph with the manifest's ``TensorRTBuild`` and timing cache; the
        engine's own tensors are read as debug tensors (``brr.backends.trt.debug``, which needs PyTorch: the
        diff has it, serving does not)."""
        from brr.backends.trt.debug import TensorRTDebugStatistics

        rebuild = TensorRTRebuild(TensorRTBuild.from_manifest(manifest), directory)
        typed = rebuild.network_model()
        note = None if rebuild.timing_cache is not None else (
            f"{directory.name} has no {TIMING_CACHE_FILE}: its node-level rebuilds may choose other kernels than "
            "the engine under test; each run checks that it reproduces the engine's logits")
        return EditedGraphs(typed, rebuild.runner_for, TensorRTDebugStatistics(typed, rebuild), note)


TENSORRT = TensorRT()
