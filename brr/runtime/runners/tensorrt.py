"""TensorRT runner: Polygraphy's TrtRunner over a serialized engine, brr's plugins registered first."""

from __future__ import annotations

from pathlib import Path

from brr.export.engines.tensorrt import import_tensorrt, register_plugins


def tensorrt_runner(engine_path: str | Path, name: str | None = None):
    import_tensorrt()
    from polygraphy.backend.common import BytesFromPath
    from polygraphy.backend.trt import EngineFromBytes, TrtRunner

    # Plugins implemented in Python (tensorrt.plugin) must be registered before deserialising.
    register_plugins()
    return TrtRunner(EngineFromBytes(BytesFromPath(str(engine_path))), name=name)
