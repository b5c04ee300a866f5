"""TensorRT plugin ``brr::SelectiveScan`` for the custom node of ``onnx.py`` (plugin mode).

Written against TensorRT's Python "quickly deployable plugins" (``tensorrt.plugin``, TensorRT >= 10.8).
``register_plugin()`` registers, once per process:

* ``@trtp.register("brr::SelectiveScan")``: inputs x, dt, A, B, C, D, dt_bias (in the node's order),
  attributes ``dt_softplus: int`` and ``chunk_size: int``; the output has x's shape and dtype.
* ``@trtp.impl``: runs the scan with PyTorch on TensorRT's stream, through the ``brr::selective_scan``
  op's CUDA kernel (mamba-ssm's Triton kernel when installed, else the reference chunked SSD),
  computing in float32 whatever the I/O type (float32 or float16).

How the ONNX parser finds it: a node whose ``op_type`` has no built-in importer is imported as the plugin
named ``op_type`` (``SelectiveScan``), of version ``plugin_version`` and namespace ``plugin_namespace``
taken from the node's attributes ("1" and "brr" on the exported node; the node's domain is not looked
at). The QDP creator registers version "1" under the namespace of the plugin id. The parser turns the
node's attributes that the creator declares into plugin fields (ONNX INT -> int32 field), so only
``dt_softplus`` and ``chunk_size`` reach the plugin; ``plugin_*`` are lookup keys only.

Why ``impl`` (JIT) rather than ``aot_impl``: an AOT implementation must hand TensorRT a compiled kernel
(PTX) and launch parameters, whereas this one calls PyTorch. The consequence: an engine built with this
plugin serialises its attributes but not its code, so it only runs in a Python process that has called
``register_plugin()`` before deserialising it (not from trtexec or C++), with torch importable.

``tensorrt`` is imported only by ``register_plugin()``; the rest of the module (the output rule and the
attribute checks, unit-tested without TensorRT; ``run_scan``, the body of the implementation) does not
need it.
"""

# No ``from __future__ import annotations`` here: tensorrt.plugin reads the decorated functions'
# annotations as classes (TensorDesc, int) and rejects string annotations.

import functools
from collections.abc import Sequence

from brr.ops.selective_scan import INPUT_NAMES, OP_TYPE, PLUGIN_NAMESPACE, parse_attributes

PLUGIN_ID = f"{PLUGIN_NAMESPACE}::{OP_TYPE}"
SUPPORTED_DTYPES = ("float32", "float16")


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


@functools.cache  # tensorrt.plugin refuses a second registration of the same plugin id
def register_plugin() -> None:
    """Register ``brr::SelectiveScan`` with TensorRT's plugin registry (idempotent)."""
    try:
        import tensorrt as trt
        import tensorrt.plugin as trtp
    except ImportError as error:
        raise ImportError(
            "The SelectiveScan TensorRT plugin needs the 'tensorrt' package (>= 10.8, with tensorrt.plugin); "
            "install the GPU extras: pip install .[gpu]"
        ) from error

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
