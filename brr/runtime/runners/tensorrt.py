"""TensorRT runner: Polygraphy's TrtRunner over a serialized engine, brr's plugins registered first."""

from __future__ import annotations

from pathlib import Path

from brr.export.engines.tensorrt import import_tensorrt, register_plugins


def tensorrt_runner(engine_path: str | Path, name: str | None = None, outputs: list[str] | None = None):
    """Polygraphy's TrtRunner over the engine file, returning only ``outputs`` (all when None)."""
    import_tensorrt()
    from polygraphy.backend.common import BytesFromPath
    from polygraphy.backend.trt import EngineFromBytes, TrtRunner

    class SelectedOutputsTrtRunner(TrtRunner):
        def infer_impl(self, feed_dict, *args, **kwargs):
            results = super().infer_impl(feed_dict, *args, **kwargs)
            return {k: v for k, v in results.items() if outputs is None or k in outputs}

    # Plugins implemented in Python (tensorrt.plugin) must be registered before deserialising.
    register_plugins()
    return SelectedOutputsTrtRunner(EngineFromBytes(BytesFromPath(str(engine_path))), name=name)
