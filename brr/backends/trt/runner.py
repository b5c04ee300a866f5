"""Polygraphy's TrtRunner over a serialized engine, brr's plugins registered first."""

from __future__ import annotations

from pathlib import Path

from polygraphy.backend.common import BytesFromPath
from polygraphy.backend.trt import EngineFromBytes, TrtRunner

from brr.backends.trt.loader import import_tensorrt, register_plugins


class SelectedOutputsTrtRunner(TrtRunner):
    """Polygraphy's TrtRunner returning only ``outputs`` (all when None)."""

    def __init__(self, engine, name: str | None = None, outputs: list[str] | None = None):
        super().__init__(engine, name=name)
        self.outputs = outputs

    def infer_impl(self, feed_dict, *args, **kwargs):
        results = super().infer_impl(feed_dict, *args, **kwargs)
        return {k: v for k, v in results.items() if self.outputs is None or k in self.outputs}


def tensorrt_runner(engine_path: str | Path, name: str | None = None, outputs: list[str] | None = None
                    ) -> SelectedOutputsTrtRunner:
    """The runner of the engine file; its deserialisation waits for activation."""
    import_tensorrt()
    # Plugins implemented in Python (tensorrt.plugin) must be registered before deserialising.
    register_plugins()
    return SelectedOutputsTrtRunner(EngineFromBytes(BytesFromPath(str(engine_path))), name=name, outputs=outputs)
