"""TensorRT (CUDA GPU, ``pip install .[gpu]``): built for a batch range with the plan's layers pinned;
the diff reads the engine's own tensors as debug tensors of rebuilds made exactly as it was built."""

from __future__ import annotations

from brr.backends.base import Backend, BuiltEngine, EditedGraphs, selected_outputs
from brr.backends.trt.loader import (
    MODEL_FILE,
    TIMING_CACHE_FILE,
    TensorRTBuild,
    TensorRTRebuild,
    build_engine,
    import_tensorrt,
)
from brr.backends.trt.runner import tensorrt_runner


class TensorRT(Backend):
    name = "tensorrt"
    model_file = MODEL_FILE
    batch_profile = True

    def require(self):
        import_tensorrt()

    def build(self, onnx_path, ops, directory, precision, fp32_nodes, batch, config, calibration):
        settings = build_engine(onnx_path, directory, precision, fp32_nodes, batch, config.n_channels,
                                config.window_samples, calibration)
        return BuiltEngine(MODEL_FILE, fp32_nodes, settings)

    def runner(self, model, manifest, probes=False, name=None, device="cpu", threads=None, lean=False):
        return tensorrt_runner(model, name=name, outputs=selected_outputs(probes))

    def edited_graphs(self, directory, manifest, fp32_model):
        """Rebuilt from the fp32 graph with the manifest's ``TensorRTBuild`` and the artifact's caches; the
        engine's own tensors are read as debug tensors (``brr.backends.trt.debug``, which needs PyTorch: the
        diff has it, serving does not)."""
        from brr.backends.trt.debug import TensorRTDebugStatistics

        rebuild = TensorRTRebuild(TensorRTBuild.from_manifest(manifest), directory)
        note = None if rebuild.timing_cache is not None else (
            f"{directory.name} has no {TIMING_CACHE_FILE} (exported by an older brr-export): its node-level "
            "rebuilds may choose other kernels than the engine under test; each run checks that it reproduces "
            "the engine's logits")
        return EditedGraphs(fp32_model, rebuild.runner_for, TensorRTDebugStatistics(fp32_model, rebuild), note)


TENSORRT = TensorRT()
