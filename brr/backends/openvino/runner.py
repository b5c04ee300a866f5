"""A compiled OpenVINO model behind Polygraphy's runner interface."""

from __future__ import annotations

import time

import numpy as np
from polygraphy.backend.base import BaseRunner
from polygraphy.common import TensorMetadata
from polygraphy.datatype import DataType

from brr.backends.openvino.loader import CompiledModel


class OpenVINORunner(BaseRunner):
    """Runs what ``compiled`` (a ``CompiledModel`` loader) compiles on activation; returns only ``outputs``
    (all when None)."""

    def __init__(self, compiled: CompiledModel, name: str | None = None, outputs: list[str] | None = None):
        super().__init__(name=name, prefix="openvino-runner")
        self._compile = compiled
        self.outputs = outputs
        self.compiled = None
        self.request = None

    def activate_impl(self):
        self.compiled = self._compile()
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
