"""TensorRT plugin ``brr::SymmetricEigh`` (TensorRT >= 10.8 ``tensorrt.plugin``, "quickly deployable").

What it computes: ``torch.linalg.eigh`` on the GPU (cuSOLVER, lower triangle), in place of the
``ai.onnx.contrib::SymmetricEigh`` node of the ``plugin`` ONNX translation (``brr.ops.eigh.onnx``):
input (..., n, n) float32, outputs eigenvalues (..., n) ascending and eigenvectors (..., n, n).

How the ONNX node finds it: TensorRT's ONNX parser has no importer for ``SymmetricEigh``, so it
falls back to the plugin registry and asks for the creator named like the node's op_type, version
"1", in the namespace given by the node's string attribute ``plugin_namespace`` ("brr"); the ONNX
domain plays no part. ``register_plugin()`` must therefore run before the parser (engine build)
and before ``Runtime.deserialize_cuda_engine`` (engine load) in the same process.

JIT (``@trtp.impl``), not AOT (``@trtp.aot_impl``): an AOT plugin must hand TensorRT one PTX kernel
and its launch grid, and the eigensolver is a cuSOLVER call sequence driven by torch, not a single
kernel. Consequences: the engine serialises only the plugin's name (it has no attributes), running
it needs Python with this module, tensorrt and a CUDA torch (``pip install .[gpu]``), and the plugin
cannot be loaded by trtexec or the C++ runtime. torch.linalg.eigh synchronises its stream to check
solver errors, so the engine must not be captured into a CUDA graph.

Supported I/O: float32, linear layout (declared through ``@trtp.autotune``; in a mixed-precision
build TensorRT keeps this layer in fp32).
"""

# No ``from __future__ import annotations`` here: tensorrt.plugin reads the decorated functions'
# annotations as classes (TensorDesc, Tensor), and that import would turn them into strings.

import importlib
from collections.abc import Sequence
from typing import TypeVar

from brr.ops.eigh import PLUGIN_NAMESPACE, PLUGIN_OP_TYPE

PLUGIN_ID = f"{PLUGIN_NAMESPACE}::{PLUGIN_OP_TYPE}"

Dim = TypeVar("Dim")
DType = TypeVar("DType")

_registered = False


def output_shapes(input_shape: Sequence[Dim]) -> tuple[tuple[Dim, ...], tuple[Dim, ...]]:
    """(eigenvalues shape, eigenvectors shape) for an input shape (..., n, n).

    Dimensions may be ints or symbolic expressions (TensorRT ``ShapeExpr``); squareness is only
    checked where both are ints, TensorRT checks the rest when it binds shapes.
    """
    dims = tuple(input_shape)
    if len(dims) < 2:
        raise ValueError(f"{PLUGIN_ID} needs a (..., n, n) input, got rank {len(dims)}")
    rows, cols = dims[-2], dims[-1]
    if isinstance(rows, int) and isinstance(cols, int) and rows != cols:
        raise ValueError(f"{PLUGIN_ID} needs square matrices, got {rows}x{cols}")
    return dims[:-1], dims


def output_dtypes(input_dtype: DType) -> tuple[DType, DType]:
    """(eigenvalues dtype, eigenvectors dtype): both those of the input."""
    return input_dtype, input_dtype


def register_plugin() -> None:
    """Register ``brr::SymmetricEigh`` with TensorRT's plugin registry (idempotent)."""
    global _registered
    if _registered:
        return
    try:
        trtp = importlib.import_module("tensorrt.plugin")
        torch = importlib.import_module("torch")
    except ImportError as error:
        raise ImportError(
            f"The TensorRT plugin {PLUGIN_ID} needs the 'tensorrt' package (>= 10.8, with tensorrt.plugin) "
            "and a CUDA build of torch: pip install .[gpu]"
        ) from error

    @trtp.register(PLUGIN_ID)
    def _describe(a: trtp.TensorDesc) -> tuple[trtp.TensorDesc, trtp.TensorDesc]:
        shapes = output_shapes(tuple(a.shape_expr))
        dtypes = output_dtypes(a.dtype)
        return tuple(trtp.from_shape_expr(shape, dtype=dtype) for shape, dtype in zip(shapes, dtypes))

    @trtp.autotune(PLUGIN_ID)
    def _formats(
        a: trtp.TensorDesc, outputs: tuple[trtp.TensorDesc, trtp.TensorDesc]
    ) -> list[trtp.AutoTuneCombination]:
        return [trtp.AutoTuneCombination("FP32, FP32, FP32", "LINEAR")]

    @trtp.impl(PLUGIN_ID)
    def _enqueue(a: trtp.Tensor, outputs: tuple[trtp.Tensor, trtp.Tensor], stream: int) -> None:
        # Zero-copy torch views of TensorRT's buffers (__cuda_array_interface__), all work queued on
        # TensorRT's stream so it is ordered with the layers around the plugin.
        with torch.cuda.stream(torch.cuda.ExternalStream(stream)):
            values, vectors = torch.linalg.eigh(torch.as_tensor(a, device="cuda"))
            torch.as_tensor(outputs[0], device="cuda").copy_(values)
            torch.as_tensor(outputs[1], device="cuda").copy_(vectors)

    _registered = True
