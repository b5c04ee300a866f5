"""OpenVINO runner: a compiled IR model (CPU) behind Polygraphy's runner interface.

``extensions`` are OpenVINO extension libraries added to the core before the IR is read: brr's
(``brr.ops.registry.openvino_extension()``) for an engine built from a plugin-mode export.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import openvino as ov
from polygraphy.backend.base import BaseRunner
from polygraphy.common import TensorMetadata
from polygraphy.datatype import DataType

PRECISION_HINTS = ("f32", "bf16", "f16")


class OpenVINORunner(BaseRunner):
    def __init__(self, model_path: str | Path, inference_precision: str = "f32", threads: int | None = None,
                 device: str = "CPU", name: str | None = None, outputs: list[str] | None = None,
                 extensions: list[str | Path] = ()):
        super().__init__(name=name, prefix="openvino-runner")
        if inference_precision not in PRECISION_HINTS:
            raise ValueError(f"inference_precision must be one of {PRECISION_HINTS}, got {inference_precision!r}")
        self.model_path = Path(model_path)
        self.config = {"INFERENCE_PRECISION_HINT": inference_precision}
        if threads is not None:
            self.config["INFERENCE_NUM_THREADS"] = int(threads)
        self.device = device
        self.outputs = outputs  # the names returned (all when None)
        self.extensions = [str(e) for e in extensions]
        self.compiled = None
        self.request = None

    def activate_impl(self):
        core = ov.Core()
        for extension in self.extensions:
            core.add_extension(extension)
        self.compiled = core.compile_model(str(self.model_path), self.device, self.config)
        self.request = self.compiled.create_infer_request()

    def get_input_metadata_impl(self):
        meta = TensorMetadata()
        for port in self.compiled.inputs:
            shape = [d.get_length() if d.is_static else -1 for d in port.get_partial_shape()]
            meta.add(port.get_any_name(), DataType.FLOAT32, shape)
        return meta

    def infer_impl(self, feed_dict):
        start = time.perf_counter()
        results = self.request.infer({k: np.ascontiguousarray(v, dtype=np.float32) for k, v in feed_dict.items()})
        outputs = {port.get_any_name(): np.array(results[port], copy=True) for port in self.compiled.outputs
                   if self.outputs is None or port.get_any_name() in self.outputs}
        self.inference_time = time.perf_counter() - start
        return outputs

    def deactivate_impl(self):
        self.request = None
        self.compiled = None
