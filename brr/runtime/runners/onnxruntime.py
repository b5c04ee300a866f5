"""ONNX Runtime runner: Polygraphy's OnnxrtRunner over a session that can run brr's custom nodes."""

from __future__ import annotations

from pathlib import Path

import onnxruntime as ort
import onnxruntime_extensions
from polygraphy.backend.base import BaseLoader
from polygraphy.backend.onnxrt import OnnxrtRunner

from brr.ops.registry import load_ort_kernels

DEVICE_PROVIDERS = {"cpu": ["CPUExecutionProvider"], "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"]}


class SessionWithCustomOps(BaseLoader):
    """ONNX path -> InferenceSession with the onnxruntime-extensions library and brr's kernels loaded."""

    def __init__(self, model_path: str | Path, device: str = "cpu", threads: int | None = None):
        super().__init__()
        if device not in DEVICE_PROVIDERS:
            raise ValueError(f"device must be one of {sorted(DEVICE_PROVIDERS)}, got {device!r}")
        self.model_path = Path(model_path)
        self.device = device
        self.threads = threads

    def call_impl(self) -> ort.InferenceSession:
        providers = DEVICE_PROVIDERS[self.device]
        if providers[0] not in ort.get_available_providers():
            raise RuntimeError(f"onnxruntime has no {providers[0]} here; install the GPU extras: pip install .[gpu]")
        load_ort_kernels()
        options = ort.SessionOptions()
        options.register_custom_ops_library(onnxruntime_extensions.get_library_path())
        if self.threads is not None:
            options.intra_op_num_threads = self.threads
        return ort.InferenceSession(str(self.model_path), options, providers=providers)


def onnxruntime_runner(model_path: str | Path, device: str = "cpu", threads: int | None = None,
                       name: str | None = None) -> OnnxrtRunner:
    return OnnxrtRunner(SessionWithCustomOps(model_path, device, threads), name=name)
