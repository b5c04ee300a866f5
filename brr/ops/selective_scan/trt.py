"""TensorRT plugin ``brr::SelectiveScan`` for the custom node of ``onnx.py`` (plugin mode).

Written against TensorRT's Python "quickly deployable plugins" (``tensorrt.plugin``, TensorRT >= 10.12).
``register_plugin()`` registers, once per process, the plugin ``@trtp.register("brr::SelectiveScan")``
(inputs x, dt, A, B, C, D, dt_bias in the node's order, attributes ``dt_softplus: int`` and ``chunk_size:
int``, an output of x's shape and dtype; float32 or float16 I/O, all seven inputs of one type, declared
through ``@trtp.autotune``) with two implementations:

* AOT, ``@trtp.aot_impl`` (first choice): the forward Triton kernel of ``triton.py`` compiled to PTX by
  ``brr.ops.ptx`` for the GPU the engine is built on (``ptx_target``); TensorRT embeds the PTX and its launch
  (grid (b, h, lane blocks), the kernel's block and shared memory, l as the one extra argument) in the
  engine, which then runs without Python: trtexec, C++, Triton Inference Server. An AOT plugin's attributes
  are not serialised, so ``dt_softplus`` is compiled into the PTX (``chunk_size`` changes only rounding);
  h, p, g and n must be build-time constants (they are in brr's exports), b and l may be dynamic.
  Registered where ``brr.ops.trt_plugin.aot_supported_here`` (TensorRT with AOT plugins, triton, a GPU that
  a PTX target runs on).
* JIT, ``@trtp.impl`` (fallback): runs the scan with PyTorch on TensorRT's stream through the
  ``brr::selective_scan`` op's CUDA kernel, computing in float32 whatever the I/O type. Such an engine
  serialises the attributes but not the code: it only runs in a Python process that has called
  ``register_plugin()`` before deserialising it, with torch importable.

Which one a build uses: the network's preference flag (``brr.ops.trt_plugin``); brr's loader prefers AOT.

How the ONNX parser finds the plugin: a node whose ``op_type`` has no built-in importer is imported as the
plugin named ``op_type`` (``SelectiveScan``), of version ``plugin_version`` and namespace ``plugin_namespace``
taken from the node's attributes ("1" and "brr" on the exported node; the node's domain is not looked
at). The QDP creator registers version "1" under the namespace of the plugin id. The parser turns the
node's attributes that the creator declares into plugin fields (ONNX INT -> int32 field), so only
``dt_softplus`` and ``chunk_size`` reach the plugin; ``plugin_*`` are lookup keys only.

``tensorrt`` is imported only by ``register_plugin()``, triton only by an AOT build; the rest of the module (output rule, attribute checks, launch and target rules, unit-tested
without TensorRT; ``run_scan``, the body of the JIT implementation) needs neither.
"""

# No ``from __future__ import annotations`` here: tensorrt.plugin reads the decorated functions'
# annotations as classes (TensorDesc, int) and rejects string annotations.

import functools
import importlib
import importlib.util
from collections.abc import Sequence
from dataclasses import dataclass

from brr.errors import DependencyUnavailable
from brr.ops import ptx, trt_plugin
from brr.ops.selective_scan import INPUT_NAMES, OP_TYPE, PLUGIN_NAMESPACE, parse_attributes
from brr.ops.trt_plugin import PluginImplementation

PLUGIN_ID = f"{PLUGIN_NAMESPACE}::{OP_TYPE}"
SUPPORTED_DTYPES = ("float32", "float16")
# TensorRT's and Triton's names of the supported types.
TRT_TYPE_NAMES = {"float32": "FP32", "float16": "FP16"}
TRITON_TYPE_NAMES = {"float32": "fp32", "float16": "fp16"}




def output_dtype(input_dtypes: Sequence[str]) -> str:
    """y's dtype from the seven inputs' dtype names: all one supported float type, which y keeps."""
    if len(input_dtypes) != len(INPUT_NAMES):
        raise ValueError(f"{OP_TYPE} takes {len(INPUT_NAMES)} inputs {INPUT_NAMES}, got {len(input_dtypes)}")
    dtype = input_dtypes[0]
    if dtype not in SUPPORTED_DTYPES or any(d != dtype for d in input_dtypes):
        raise ValueError(
            f"{OP_TYPE} needs all inputs of one type among {SUPPORTED_DTYPES}, got {input_dtypes}"
        )
    return dtype


def output_shape(input_shapes: Sequence[Sequence[int]]) -> tuple[int, ...]:
    """y's shape from the seven inputs' concrete shapes (checked against the spec): x's shape."""
    if len(input_shapes) != len(INPUT_NAMES):
        raise ValueError(f"{OP_TYPE} takes {len(INPUT_NAMES)} inputs {INPUT_NAMES}, got {len(input_shapes)}")
    x, dt, A, B, C, D, dt_bias = (tuple(int(d) for d in s) for s in input_shapes)
    if len(x) != 4:
        raise ValueError(f"x must be (b, l, h, p), got {x}")
    b, length, h, _ = x
    expected = {"dt": (b, length, h), "A": (h,), "D": (h,), "dt_bias": (h,)}
    for name, shape in {"dt": dt, "A": A, "D": D, "dt_bias": dt_bias}.items():
        if shape != expected[name]:
            raise ValueError(f"{name} must be {expected[name]} for x {x}, got {shape}")
    if len(B) != 4 or B[:2] != (b, length) or B[2] == 0 or h % B[2] or C != B:
        raise ValueError(f"B and C must both be (b, l, g, n) with h % g == 0 for x {x}, got {B} and {C}")
    return x


def run_scan(inputs: Sequence, output, dt_softplus: int, chunk_size: int, stream: int) -> None:
    """Compute y into ``output`` on CUDA stream ``stream`` (a ``cudaStream_t`` as int).

    ``inputs`` (x, dt, A, B, C, D, dt_bias) and ``output`` are anything ``torch.as_tensor`` maps onto
    device memory through ``__cuda_array_interface__``: TensorRT's plugin tensors, or torch tensors.
    """
    import torch

    from brr.ops.selective_scan import selective_scan

    softplus, chunk = parse_attributes(dt_softplus, chunk_size)
    with torch.cuda.stream(torch.cuda.ExternalStream(stream)), torch.no_grad():
        tensors = [torch.as_tensor(t, device="cuda") for t in inputs]
        out = torch.as_tensor(output, device="cuda")
        if tuple(out.shape) != output_shape([t.shape for t in tensors]):
            raise ValueError(
                f"{OP_TYPE} output buffer {tuple(out.shape)} does not match x {tuple(tensors[0].shape)}"
            )
        # float32 inside: the fp16 graph's scan keeps reference accuracy; copy_ casts back to y's type.
        out.copy_(selective_scan(*(t.float() for t in tensors), softplus, chunk))


def type_combinations() -> str:
    """``AutoTuneCombination`` types: the seven inputs and y all float32 or all float16."""
    return ", ".join(["|".join(TRT_TYPE_NAMES[d] for d in SUPPORTED_DTYPES)] * (len(INPUT_NAMES) + 1))


@dataclass(frozen=True)
class AotLaunch:
    """What TensorRT needs to launch the forward kernel: its PTX, the grid (batch, heads, lane blocks) and
    the length passed as the extra argument; batch and length are ints or TensorRT shape expressions."""

    kernel: ptx.CompiledKernel
    grid: tuple
    length: object


def aot_launch(x_dims: Sequence, b_dims: Sequence, dtype: str, dt_softplus: bool, capability: int) -> AotLaunch:
    """The AOT kernel for x (b, l, h, p) and B (b, l, g, n) of ``dtype`` ("float32" or "float16") on a GPU of
    ``capability``; h, p, g and n must be ints, b and l may be shape expressions. Raises ``LaunchError``
    where the target cannot launch it."""
    if len(x_dims) != 4 or len(b_dims) != 4:
        raise ValueError(f"{OP_TYPE} needs x (b, l, h, p) and B (b, l, g, n), got ranks {len(x_dims)}, {len(b_dims)}")
    batch, length, heads, head_dim = x_dims
    static = {"heads": heads, "head dim": head_dim, "groups": b_dims[2], "state size": b_dims[3]}
    dynamic = [name for name, extent in static.items() if not isinstance(extent, int)]
    if dynamic:
        raise ValueError(f"{PLUGIN_ID}'s AOT kernel needs build-time {', '.join(dynamic)}; only b and l may vary")
    if dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"{OP_TYPE} stores {SUPPORTED_DTYPES}, got {dtype}")
    try:
        kernels = importlib.import_module("brr.ops.selective_scan.triton")
    except ImportError as error:
        raise DependencyUnavailable(f"{PLUGIN_ID}'s AOT kernel is compiled by triton; "
                                    f"{trt_plugin.INSTALL_HINT}") from error
    plan = kernels.ScanPlan(head_dim, b_dims[2], b_dims[3], dt_softplus)
    grid = plan.grid(batch, heads)
    io_type = TRITON_TYPE_NAMES[dtype]
    target = ptx.ptx_target(capability)
    if target is None:
        raise ptx.LaunchError(f"{PLUGIN_ID}: no PTX target runs on compute capability {capability}; "
                              f"brr compiles for sm_{min(ptx.TARGETS)} and later")
    kernel = kernels.compile_forward(plan, io_type, io_type, target)
    ptx.check_launch(kernel, (batch if isinstance(batch, int) else 1, *grid[1:]))
    return AotLaunch(kernel, grid, length)


@functools.cache  # tensorrt.plugin refuses a second registration of the same plugin id
def register_plugin() -> None:
    """Register ``brr::SelectiveScan`` with TensorRT's plugin registry (idempotent): JIT always, AOT where
    ``trt_plugin.aot_supported_here`` says so."""
    # One function: tensorrt.plugin reads each implementation's schema from the signature of a nested function.
    trt, trtp = trt_plugin.import_tensorrt_plugin(PLUGIN_ID)

    dtype_names = {trt.DataType.FLOAT: "float32", trt.DataType.HALF: "float16"}

    @trtp.register(PLUGIN_ID)
    def _describe(
        x: trtp.TensorDesc,
        dt: trtp.TensorDesc,
        A: trtp.TensorDesc,
        B: trtp.TensorDesc,
        C: trtp.TensorDesc,
        D: trtp.TensorDesc,
        dt_bias: trtp.TensorDesc,
        dt_softplus: int,
        chunk_size: int,
    ) -> trtp.TensorDesc:
        output_dtype([dtype_names.get(t.dtype, str(t.dtype)) for t in (x, dt, A, B, C, D, dt_bias)])
        parse_attributes(dt_softplus, chunk_size)
        return x.like()

    @trtp.autotune(PLUGIN_ID)
    def _formats(
        x: trtp.TensorDesc,
        dt: trtp.TensorDesc,
        A: trtp.TensorDesc,
        B: trtp.TensorDesc,
        C: trtp.TensorDesc,
        D: trtp.TensorDesc,
        dt_bias: trtp.TensorDesc,
        outputs: tuple[trtp.TensorDesc],
    ) -> list[trtp.AutoTuneCombination]:
        return [trtp.AutoTuneCombination(type_combinations(), "LINEAR")]

    @trtp.impl(PLUGIN_ID)
    def _enqueue(
        x: trtp.Tensor,
        dt: trtp.Tensor,
        A: trtp.Tensor,
        B: trtp.Tensor,
        C: trtp.Tensor,
        D: trtp.Tensor,
        dt_bias: trtp.Tensor,
        dt_softplus: int,
        chunk_size: int,
        outputs: tuple[trtp.Tensor],
        stream: int,
    ) -> None:
        run_scan((x, dt, A, B, C, D, dt_bias), outputs[0], dt_softplus, chunk_size, stream)

    implementations = (PluginImplementation.JIT,)
    if trt_plugin.aot_supported_here(trt):

        def _static(extent):
            return extent.constant_value() if extent.is_constant else extent

        # Every attribute is listed: TensorRT passes them all to the AOT function, in registration order.
        @trtp.aot_impl(PLUGIN_ID)
        def _compile(
            x: trtp.TensorDesc,
            dt: trtp.TensorDesc,
            A: trtp.TensorDesc,
            B: trtp.TensorDesc,
            C: trtp.TensorDesc,
            D: trtp.TensorDesc,
            dt_bias: trtp.TensorDesc,
            dt_softplus: int,
            chunk_size: int,
            outputs: tuple[trtp.TensorDesc],
            tactic: int,
        ) -> tuple[str | bytes, str | bytes, trtp.KernelLaunchParams, trtp.SymIntExprs]:
            softplus, _ = parse_attributes(dt_softplus, chunk_size)
            launch = aot_launch([_static(e) for e in x.shape_expr], [_static(e) for e in B.shape_expr],
                                dtype_names[x.dtype], softplus, trt_plugin.gpu_capability())
            params = trtp.KernelLaunchParams()
            params.grid_x, params.grid_y, params.grid_z = launch.grid
            params.block_x = launch.kernel.block[0]
            params.shared_mem = launch.kernel.shared_bytes
            extra_args = trtp.SymIntExprs(1)
            extra_args[0] = trtp.SymInt32(launch.length)
            return launch.kernel.name, launch.kernel.ptx, params, extra_args

        implementations = (PluginImplementation.AOT, PluginImplementation.JIT)
    trt_plugin.record_registration(PLUGIN_ID, implementations)
