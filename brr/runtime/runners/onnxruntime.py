"""ONNX Runtime sessions and runners: Polygraphy's OnnxrtRunner over a session that can run brr's custom nodes.

The one place sessions are made, for serving, the diff and calibration alike. No session has a CPU
memory arena: the arena keeps a run's peak for the session's life (a v3-small fp16 window: 2.4 GB
with it, 1.23 GB without, at the same speed). ``lean=True`` adds the priority-based execution order,
which keeps the graph's node order, so that statistics inserted after a node run as soon as its
output exists (see ``brr.onnx.statistics``).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from polygraphy.backend.base import BaseLoader
from polygraphy.backend.onnxrt import OnnxrtRunner

from brr.ops.registry import load_ort_kernels

DEVICE_PROVIDERS = {"cpu": ["CPUExecutionProvider"], "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"]}
STANDARD_DOMAINS = ("", "ai.onnx", "ai.onnx.ml", "com.microsoft")
# ONNX Runtime's own warnings (e.g. constant folding it skips) say nothing a user can act on.
ERROR_SEVERITY = 3


def has_custom_nodes(model: onnx.ModelProto) -> bool:
    return any(node.domain not in STANDARD_DOMAINS for node in model.graph.node)


class SessionWithCustomOps(BaseLoader):
    """ONNX model (path or ModelProto) -> InferenceSession, brr's custom-op kernels loaded when needed."""

    def __init__(self, model: str | Path | onnx.ModelProto, device: str = "cpu", threads: int | None = None,
                 lean: bool = False, optimize: bool = True):
        super().__init__()
        if device not in DEVICE_PROVIDERS:
            raise ValueError(f"device must be one of {sorted(DEVICE_PROVIDERS)}, got {device!r}")
        if isinstance(model, onnx.ModelProto):
            self.source: str | bytes = model.SerializeToString()
            self.custom = has_custom_nodes(model)
        else:
            self.source = str(model)
            self.custom = has_custom_nodes(onnx.load(self.source, load_external_data=False))
        self.device, self.threads, self.lean, self.optimize = device, threads, lean, optimize

    def call_impl(self) -> ort.InferenceSession:
        providers = DEVICE_PROVIDERS[self.device]
        if providers[0] not in ort.get_available_providers():
            raise RuntimeError(f"onnxruntime has no {providers[0]} here; install the GPU extras: pip install .[gpu]")
        options = ort.SessionOptions()
        options.log_severity_level = ERROR_SEVERITY
        if self.custom:
            import onnxruntime_extensions

            load_ort_kernels()
            options.register_custom_ops_library(onnxruntime_extensions.get_library_path())
        if self.threads is not None:
            options.intra_op_num_threads = self.threads
        options.enable_cpu_mem_arena = False
        if self.lean:
            options.execution_order = ort.ExecutionOrder.PRIORITY_BASED
        if not self.optimize:
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        return ort.InferenceSession(self.source, options, providers=providers)


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
