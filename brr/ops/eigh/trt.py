"""TensorRT plugin ``brr::SymmetricEigh`` (TensorRT >= 10.12 ``tensorrt.plugin``, "quickly deployable").

What it computes: the ``ai.onnx.contrib::SymmetricEigh`` node of the ``plugin`` ONNX translation
(``brr.ops.eigh.onnx``): input (..., n, n) float32 (lower triangle read), outputs eigenvalues (..., n)
ascending and eigenvectors (..., n, n); float32, linear layout (declared through ``@trtp.autotune``; in a
mixed-precision build TensorRT keeps this layer in fp32). ``register_plugin()`` registers it with two
implementations:

* AOT, ``@trtp.aot_impl`` (first choice): the Jacobi kernel of ``brr.ops.eigh.triton`` compiled to PTX by
  ``brr.ops.ptx`` for the GPU the engine is built on, with its launch (``aot_launch``: one program per
  matrix, the kernel's block and shared memory, n as the one extra argument). TensorRT embeds both in the
  engine, which then runs without Python (trtexec, C++, Triton Inference Server) and without a stream
  synchronisation, so it can be captured into a CUDA graph. n must be a build-time constant (it is in
  brr's exports, 19); the batch dimensions may be dynamic. Registered where
  ``brr.ops.trt_plugin.aot_supported_here`` (TensorRT with AOT plugins, triton, a GPU a PTX target runs on).
* JIT, ``@trtp.impl`` (fallback): ``torch.linalg.eigh`` (cuSOLVER) on TensorRT's stream. Such an engine
  serialises only the plugin's name: it runs only in a Python process that has called ``register_plugin()``
  before deserialising it, with tensorrt and a CUDA torch (``pip install .[gpu]``); cuSOLVER synchronises
  its stream to check solver errors, so that engine must not be captured into a CUDA graph.

Which one a build uses: the network's preference flag (``brr.ops.trt_plugin``); brr's loader prefers AOT.

How the ONNX node finds the plugin: TensorRT's ONNX parser has no importer for ``SymmetricEigh``, so it
falls back to the plugin registry and asks for the creator named like the node's op_type, version "1", in
the namespace given by the node's string attribute ``plugin_namespace`` ("brr"); the ONNX domain plays no
part. ``register_plugin()`` must therefore run before the parser (engine build), and for a JIT engine
before ``Runtime.deserialize_cuda_engine`` (engine load), in the same process.

``tensorrt`` is imported only by ``register_plugin()``, triton only by an AOT build; the shape, launch and implementation rules here are unit-tested without either.
"""

# No ``from __future__ import annotations`` here: tensorrt.plugin reads the decorated functions'
# annotations as classes (TensorDesc, Tensor), and that import would turn them into strings.

import functools
import operator
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from brr.errors import DependencyUnavailable
from brr.ops import ptx, trt_plugin
from brr.ops.eigh import PLUGIN_NAMESPACE, PLUGIN_OP_TYPE
from brr.ops.trt_plugin import PluginImplementation

PLUGIN_ID = f"{PLUGIN_NAMESPACE}::{PLUGIN_OP_TYPE}"

Dim = TypeVar("Dim")
DType = TypeVar("DType")


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


def _static(dim: Any) -> int | None:
    """An int, or a TensorRT shape expression that is a build-time constant, as int; None otherwise."""
    if isinstance(dim, int):
        return dim
    if getattr(dim, "is_constant", False):
        return int(dim.constant_value())
    return None


@dataclass(frozen=True)
class AotLaunch:
    """What the AOT implementation hands TensorRT: the kernel, its grid and its scalar argument."""

    kernel: ptx.CompiledKernel
    grid: tuple[Any, int, int]  # one program per matrix: ints, or TensorRT shape expressions
    extra_args: tuple[int]  # (n,): the kernel's int32 after the input pointer


def aot_launch(input_shape: Sequence[Any], capability: int) -> AotLaunch:
    """The launch of the Triton kernel over an input of shape (..., n, n) on ``sm_<capability>``.

    The batch dimensions may be ints or TensorRT shape expressions (anything that multiplies); n must be
    static, since the kernel's tile is compiled for it. With concrete dimensions the launch is checked
    against the target's limits (``brr.ops.ptx.check_launch``); symbolic grids are TensorRT's to bound.
    """
    from brr.ops.eigh.triton import compile_ptx

    dims = output_shapes(input_shape)[1]
    n = _static(dims[-1])
    if n is None:
        raise ValueError(f"{PLUGIN_ID} compiles its kernel for a static n; the input's last dimension is "
                         f"{dims[-1]}")
    leading = dims[:-2]
    matrices = functools.reduce(operator.mul, leading) if leading else 1
    kernel = compile_ptx(n, capability)
    grid = (matrices, 1, 1)
    if isinstance(matrices, int):
        ptx.check_launch(kernel, grid)
    return AotLaunch(kernel, grid, (n,))


@functools.cache  # tensorrt.plugin refuses a second registration of the same plugin id
def register_plugin() -> None:
    """Register ``brr::SymmetricEigh`` with TensorRT's plugin registry (idempotent): JIT always, AOT where
    ``trt_plugin.aot_supported_here`` says so."""
    trt, trtp = trt_plugin.import_tensorrt_plugin(PLUGIN_ID)
    try:
        import torch
    except ImportError as error:
        raise DependencyUnavailable(f"the TensorRT plugin {PLUGIN_ID}'s JIT implementation needs a CUDA build of "
                                    f"torch; {trt_plugin.INSTALL_HINT}") from error

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

    if not trt_plugin.aot_supported_here(trt):
        trt_plugin.record_registration(PLUGIN_ID, (PluginImplementation.JIT,))
        return
    target = ptx.ptx_target(trt_plugin.gpu_capability())

    @trtp.aot_impl(PLUGIN_ID)
    def _compile(
        a: trtp.TensorDesc, outputs: tuple[trtp.TensorDesc, trtp.TensorDesc], tactic: int
    ) -> tuple[str | bytes, str | bytes, trtp.KernelLaunchParams, trtp.SymExprs]:
        launch = aot_launch(tuple(a.shape_expr), target)
        params = trtp.KernelLaunchParams()
        params.grid_x = launch.grid[0]
        params.block_x = launch.kernel.block[0]
        params.shared_mem = launch.kernel.shared_bytes
        extra_args = trtp.SymIntExprs.from_tuple([trtp.SymInt32(arg) for arg in launch.extra_args])
        return launch.kernel.name, launch.kernel.ptx, params, extra_args

    trt_plugin.record_registration(PLUGIN_ID, (PluginImplementation.AOT, PluginImplementation.JIT))
