"""Selective scan (Mamba-2 SSD) as the custom op ``brr::selective_scan``.

Spec
----
Inputs (float32 unless noted; b batch, l length, h heads, p head dim, g groups, n state size):
  x (b, l, h, p); dt (b, l, h) raw step sizes; A (h,) negative decay rates; B, C (b, l, g, n) with
  h % g == 0; D (h,) skip weights or None; dt_bias (h,) or None; dt_softplus: bool; chunk_size: int > 0.
Output: y (b, l, h, p), the same dtype as x.
Semantics: dt' = softplus(dt + dt_bias) (when dt_softplus), then for each head the linear recurrence
  state_t = exp(dt'_t A) state_{t-1} + dt'_t x_t B_t^T,  y_t = state_t C_t + D x_t,  state_{-1} = 0.
The chunked SSD evaluation in ``reference.ssd_chunked`` is the reference; chunk_size changes only
the rounding, never the result.

Implementations: ``op`` (the PyTorch op ``brr::selective_scan``), ``reference`` (PyTorch, CPU and CUDA:
the definition), ``native`` (C++ CPU kernels,
forward and backward, built by ``pip install``: the op's CPU kernel, the ONNX Runtime kernel's compute
and the OpenVINO extension), ``triton`` (Triton GPU kernels, forward and backward), ``onnx`` (standard ONNX
decomposition and the custom node), ``ort`` (ONNX Runtime kernel), ``trt`` (TensorRT plugin: the Triton
forward kernel as AOT PTX embedded in the engine, a PyTorch JIT callback as fallback). On CUDA the op runs
mamba-ssm's Triton kernel when it is installed, else brr's Triton kernels (forward and backward; training
needs no mamba-ssm); without the native module the CPU kernel is the pure-PyTorch reference.
``BRR_SELECTIVE_SCAN=reference`` forces the reference everywhere, ``BRR_SELECTIVE_SCAN=triton`` brr's Triton
kernels on CUDA. The native and Triton kernels compute in float32 and store x's dtype (float32, float16 or
bfloat16); A, D and dt_bias are read as float32 (native) or in their own dtype (Triton).

Custom node (ops mode "plugin"): ``ai.onnx.contrib::SelectiveScan`` with inputs x, dt, A, B, C, D, dt_bias
(missing D / dt_bias exported as zeros), output y, attributes dt_softplus (int 0/1), chunk_size (int),
plugin_namespace "brr" and plugin_version "1" (TensorRT's lookup keys for the ``brr::SelectiveScan``
plugin). ONNX Runtime sessions need ``register_custom_ops_library(onnxruntime_extensions.get_library_path())``
and ``brr.ops.selective_scan.ort`` imported; details in ``onnx.py``, ``ort.py`` and ``trt.py``.

OpenVINO builds lower each node, with parts of its Mamba-2 block around it, into the extension's
``brr.openvino::Mamba2Scan`` or ``Mamba2ProjectedScan``, whose inputs ``lowered_inputs.def`` names (the design:
``brr/backends/openvino/lowering/__init__.py``). The exported ONNX keeps the node above.
"""

from __future__ import annotations

import importlib

# The custom node's contract, shared by the exporter (onnx.py), the ONNX Runtime kernel (ort.py) and the
# TensorRT plugin (trt.py); kept here, free of PyTorch and onnxscript, so that serving an engine needs neither.
DOMAIN = "ai.onnx.contrib"
OP_TYPE = "SelectiveScan"
PLUGIN_NAMESPACE = "brr"
PLUGIN_VERSION = "1"
INPUT_NAMES = ("x", "dt", "A", "B", "C", "D", "dt_bias")

# PyTorch-side names, imported on first use (``from brr.ops.selective_scan import selective_scan``).
_LAZY = {"selective_scan": "op", "ssd_chunked": "reference", "ssd_recurrent": "reference"}

__all__ = ["DOMAIN", "INPUT_NAMES", "OP_TYPE", "PLUGIN_NAMESPACE", "PLUGIN_VERSION", "parse_attributes",
           *_LAZY]


def parse_attributes(dt_softplus: int, chunk_size: int) -> tuple[bool, int]:
    """The custom node's attributes as the op's ``(dt_softplus, chunk_size)``, validated."""
    if int(dt_softplus) not in (0, 1):
        raise ValueError(f"dt_softplus must be 0 or 1, got {dt_softplus!r}")
    if int(chunk_size) <= 0:
        raise ValueError(f"chunk_size must be positive, got {chunk_size!r}")
    return bool(dt_softplus), int(chunk_size)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
