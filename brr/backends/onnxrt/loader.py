"""ONNX Runtime engines (CPU execution provider) and the sessions that run them.

An engine is a chain of Polygraphy loaders over the fp32 export (every probe an output), saved as the
artifact's one ``model.onnx``:

* fp16 and bf16: ``brr.onnx.precision.RoundThroughLowPrecision``: weights stored in the reduced
  precision, every stored activation rounded through it by explicit Cast pairs, fp32 kernels.
* int8: ``brr.onnx.quantize.QuantizeStaticQDQ`` on the given windows; standard-ops exports only.

``SessionWithCustomOps`` makes every session (serving, the diff, calibration): brr's custom-op
kernels are loaded when the graph has custom nodes. No session has a CPU memory arena (it keeps a run's
peak for the session's life: a v3-small fp16 window, 2.4 GB with it, 1.23 GB without, at the same
speed within 10 %) nor buffer reuse: ONNX Runtime's planner hands a freed buffer to a later tensor of
the same size, which keeps it allocated across everything computed in between; the two directions of
the edge stream's scans then hold each other's 80 MB blocks (the same window: 1.5 GB run peak with
reuse, 0.8-0.9 GB without, against 0.27 GB of tensors live at once in node order; runs 5-15 % slower). ``lean=True`` adds the priority-based execution order, which keeps the
graph's node order, so that statistics inserted after a node run as soon as its output exists (see
``brr.onnx.statistics``).
"""

from __future__ import annotations

import functools
import importlib.metadata
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from polygraphy.backend.base import BaseLoader
from polygraphy.backend.onnx import OnnxFromPath, SaveOnnx

from brr.backends.base import EngineBuildError
from brr.onnx.precision import RoundThroughLowPrecision, low_precision_model
from brr.onnx.quantize import QuantizeStaticQDQ
from brr.ops.registry import load_ort_kernels

MODEL_FILE = "model.onnx"
DEVICE_PROVIDERS = {"cpu": ["CPUExecutionProvider"], "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"]}
STANDARD_DOMAINS = ("", "ai.onnx", "ai.onnx.ml", "com.microsoft")
# ONNX Runtime's own warnings (e.g. constant folding it skips) say nothing a user can act on.
ERROR_SEVERITY = 3
# onnxruntime and onnxruntime-gpu install the same module, so they cannot share an environment, and an extra
# cannot remove a base requirement: the CUDA build replaces the CPU one by this command (README, GPU).
ONNXRUNTIME_DISTRIBUTIONS = ("onnxruntime", "onnxruntime-gpu")
CUDA_ONNXRUNTIME_COMMAND = "pip uninstall -y onnxruntime onnxruntime-gpu && pip install 'onnxruntime-gpu>=1.20'"
COMPUTES_IN = {"fp16": "fp32 kernels on fp16-rounded tensors", "bf16": "fp32 kernels on bf16-rounded tensors",
               "int8": "int8 QDQ Conv/MatMul"}


def installed_onnxruntime() -> list[str]:
    """Which of the ONNX Runtime distributions are installed."""
    found = []
    for name in ONNXRUNTIME_DISTRIBUTIONS:
        try:
            importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            continue
        found.append(name)
    return found


def missing_provider_message(provider: str, distributions: list[str]) -> str:
    """Why ``provider`` is not available given the installed ONNX Runtime distributions, and the fix."""
    if "onnxruntime-gpu" not in distributions:
        return (f"onnxruntime has no {provider}: the installed build is the CPU one; replace it with the CUDA "
                f"build: {CUDA_ONNXRUNTIME_COMMAND}")
    if "onnxruntime" in distributions:
        return (f"onnxruntime has no {provider}: onnxruntime and onnxruntime-gpu are both installed and overwrite "
                f"each other's module; keep only the CUDA build: {CUDA_ONNXRUNTIME_COMMAND}")
    return (f"onnxruntime-gpu is installed but has no {provider} here: no CUDA device, or CUDA/cuDNN libraries "
            "it cannot load (see onnxruntime's CUDA requirements)")


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
            raise RuntimeError(missing_provider_message(providers[0], installed_onnxruntime()))
        options = ort.SessionOptions()
        options.log_severity_level = ERROR_SEVERITY
        if self.custom:
            import onnxruntime_extensions

            load_ort_kernels()
            options.register_custom_ops_library(onnxruntime_extensions.get_library_path())
        if self.threads is not None:
            options.intra_op_num_threads = self.threads
        options.enable_cpu_mem_arena = False
        options.enable_mem_reuse = False  # see the module docstring
        if self.lean:
            options.execution_order = ort.ExecutionOrder.PRIORITY_BASED
        if not self.optimize:
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        return ort.InferenceSession(self.source, options, providers=providers)


def build_engine(onnx_path: Path, ops: str, directory: Path, precision: str, fp32_nodes: list[str],
                 calibration: Iterable[np.ndarray] | None = None, model_file: str = MODEL_FILE) -> dict:
    """Write ``model_file`` of ``precision`` into ``directory``; returns the settings the manifest records."""
    if precision in RoundThroughLowPrecision.DTYPES:
        converted = functools.partial(low_precision_model, OnnxFromPath(str(onnx_path))(), fp32_nodes, precision)
    elif precision == "int8":
        if ops != "standard":
            raise EngineBuildError(
                "int8 on ONNX Runtime needs --ops standard: ORT's calibrator cannot load the custom-op library"
            )
        if calibration is None:
            raise EngineBuildError("int8 needs calibration windows (brr-export --data)")
        converted = QuantizeStaticQDQ(onnx_path, calibration, fp32_nodes)
    else:
        raise EngineBuildError(f"ONNX Runtime engine precision must be fp16, bf16 or int8 here, got {precision!r}")
    directory.mkdir(parents=True, exist_ok=True)
    SaveOnnx(converted, str(directory / model_file))()
    return {"execution_provider": "CPUExecutionProvider", "computes_in": COMPUTES_IN[precision]}
