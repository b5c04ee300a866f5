"""Polygraphy's OnnxrtRunner over a ``SessionWithCustomOps``, fetching only the outputs asked for."""

from __future__ import annotations

import functools
import time
from pathlib import Path

import numpy as np
import onnx
from polygraphy.backend.onnxrt import OnnxrtRunner

from brr.backends.onnxrt.loader import SessionWithCustomOps


class SelectedOutputsRunner(OnnxrtRunner):
    """Polygraphy's OnnxrtRunner fetching only ``outputs`` (all when None)."""

    def __init__(self, sess, name: str | None = None, outputs: list[str] | None = None):
        super().__init__(sess, name=name)
        self.outputs = outputs

    def infer_impl(self, feed_dict):
        start = time.perf_counter()
        values = self.sess.run(self.outputs, {k: np.asarray(v) for k, v in feed_dict.items()})
        self.inference_time = time.perf_counter() - start
        names = self.outputs or [o.name for o in self.sess.get_outputs()]
        return dict(zip(names, values))


def onnxruntime_runner(model: str | Path | onnx.ModelProto, name: str | None = None, device: str = "cpu",
                       threads: int | None = None, lean: bool = False,
                       outputs: list[str] | None = None) -> SelectedOutputsRunner:
    return SelectedOutputsRunner(SessionWithCustomOps(model, device, threads, lean=lean), name=name, outputs=outputs)


# (model, name) -> runner, for edited copies of a graph: the diff's node-level runs.
lean_onnxruntime_runner = functools.partial(onnxruntime_runner, lean=True)
