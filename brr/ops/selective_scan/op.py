"""``brr::selective_scan``, the PyTorch op (spec in ``brr/ops/selective_scan/__init__.py``): the reference
on any device, the native kernel on CPU (forward and backward); on CUDA mamba-ssm's Triton kernel when it is
installed, else brr's own Triton kernels (``triton.py``, forward and backward), so that training on a GPU
needs neither mamba-ssm nor the reference's memory.

``BRR_SELECTIVE_SCAN`` picks the kernels: unset (or ``native``) the fastest available, ``reference`` the
pure-PyTorch reference everywhere, ``triton`` brr's Triton kernels on CUDA even where mamba-ssm is installed.

Importing this module registers the op; ``brr.ops.selective_scan.selective_scan`` imports it on first use.
"""

from __future__ import annotations

import functools
import importlib
import os
from enum import Enum

import torch

from brr.ops.selective_scan import native
from brr.ops.selective_scan.reference import ssd_chunked


@torch.library.custom_op("brr::selective_scan", mutates_args=())
def _selective_scan_op(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None,
    dt_bias: torch.Tensor | None,
    dt_softplus: bool,
    chunk_size: int,
) -> torch.Tensor:
    return ssd_chunked(x, dt, A, B, C, D, dt_bias, dt_softplus, chunk_size).contiguous()


_NATIVE_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _native_operands(x, dt, A, B, C, D, dt_bias):
    """Contiguous operands as the native kernel takes them: x, dt, B, C in x's dtype, A, D, dt_bias fp32."""
    dtype = x.dtype
    heads = x.shape[2]
    params = [torch.zeros(heads) if t is None else t.detach().float().contiguous() for t in (A, D, dt_bias)]
    return (x.contiguous(), dt.to(dtype).contiguous(), params[0], B.to(dtype).contiguous(),
            C.to(dtype).contiguous(), params[1], params[2])


def _use_native(x: torch.Tensor) -> bool:
    return x.device.type == "cpu" and x.dtype in _NATIVE_DTYPES and native.enabled()


@_selective_scan_op.register_kernel("cpu")
def _selective_scan_cpu(x, dt, A, B, C, D, dt_bias, dt_softplus, chunk_size):
    if not _use_native(x):
        return ssd_chunked(x, dt, A, B, C, D, dt_bias, dt_softplus, chunk_size).contiguous()
    x, dt, A, B, C, D, dt_bias = _native_operands(x, dt, A, B, C, D, dt_bias)
    y = torch.empty_like(x)
    native.require().forward(x, dt, A, B, C, D, dt_bias, y, dt_softplus, torch.get_num_threads())
    return y


class CudaKernel(Enum):
    """What runs ``brr::selective_scan`` on CUDA."""

    MAMBA_SSM = "mamba-ssm"  # mamba_chunk_scan_combined forward; backward through the reference
    TRITON = "triton"  # brr's Triton kernels, forward and backward
    REFERENCE = "reference"  # the pure-PyTorch chunked SSD and its autograd


@functools.cache  # a missing package is looked for once, not at every call
def _mamba_scan():
    try:
        from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined
    except ImportError:
        return None
    return mamba_chunk_scan_combined


@functools.cache
def _triton_kernels():
    try:
        return importlib.import_module("brr.ops.selective_scan.triton")
    except ImportError:  # no triton: the pure-PyTorch path is always valid
        return None


def cuda_kernel(tensors=()) -> CudaKernel:
    """The CUDA kernel for these operands (x, dt, A, B, C, D, dt_bias; None entries ignored), as
    ``BRR_SELECTIVE_SCAN`` and the installed packages allow; float64 (or other) storage takes the reference."""
    choice = os.environ.get(native.KERNEL_ENV, "native")
    stored = all(t.dtype in _NATIVE_DTYPES for t in tensors if t is not None)
    if choice == "reference" or not stored:
        return CudaKernel.REFERENCE
    if choice != "triton" and _mamba_scan() is not None:
        return CudaKernel.MAMBA_SSM
    return CudaKernel.TRITON if _triton_kernels() is not None else CudaKernel.REFERENCE


@_selective_scan_op.register_kernel("cuda")
def _selective_scan_cuda(x, dt, A, B, C, D, dt_bias, dt_softplus, chunk_size):
    kernel = cuda_kernel((x, dt, A, B, C, D, dt_bias))
    if kernel is CudaKernel.MAMBA_SSM:
        return _mamba_scan()(
            x.contiguous(), dt.contiguous(), A, B.contiguous(), C.contiguous(), chunk_size,
            D=D, dt_bias=dt_bias, dt_softplus=dt_softplus,
        ).to(x.dtype)
    if kernel is CudaKernel.TRITON:
        return _triton_kernels().selective_scan_forward(x, dt, A, B, C, D, dt_bias, dt_softplus)
    return ssd_chunked(x, dt, A, B, C, D, dt_bias, dt_softplus, chunk_size).contiguous()


@_selective_scan_op.register_fake
def _(x, dt, A, B, C, D, dt_bias, dt_softplus, chunk_size):
    return x.new_empty(x.shape)


def _setup_context(ctx, inputs, output):
    ctx.save_for_backward(*[t for t in inputs[:7] if t is not None])
    ctx.present = [t is not None for t in inputs[:7]]
    ctx.flags = inputs[7:]


def _native_backward(tensors, grad_y, dt_softplus):
    x, dt, A, B, C, D, dt_bias = tensors
    operands = _native_operands(x, dt, A, B, C, D, dt_bias)
    grad_y = grad_y.to(x.dtype).contiguous()
    dx, ddt, dB, dC = (torch.empty_like(operands[i]) for i in (0, 1, 3, 4))
    rows = [torch.empty(x.shape[0], x.shape[2], dtype=torch.float64) for _ in range(3)]
    native.require().backward(*operands, grad_y, dx, ddt, dB, dC, *rows, dt_softplus, torch.get_num_threads())
    dA, dD, ddt_bias = (r.sum(0) for r in rows)
    grads = (dx, ddt, dA, dB, dC, dD, ddt_bias)
    return tuple(None if t is None else g.to(t.dtype) for t, g in zip(tensors, grads))


def _backward(ctx, grad_y):
    saved = iter(ctx.saved_tensors)
    tensors = [next(saved).detach() if present else None for present in ctx.present]
    if _use_native(tensors[0]):
        return (*_native_backward(tensors, grad_y, ctx.flags[0]), None, None)
    if tensors[0].is_cuda and cuda_kernel(tensors) is CudaKernel.TRITON:
        grads = _triton_kernels().selective_scan_backward(grad_y, *tensors, ctx.flags[0])
        return (*grads, None, None)
    # Elsewhere: recompute the differentiable reference and take its vector-Jacobian product (exact, and
    # it keeps the op opaque to tracers while training still works on any device).
    tensors = [t.requires_grad_(True) if t is not None else None for t in tensors]
    with torch.enable_grad():
        y = ssd_chunked(*tensors, *ctx.flags)
        wanted = [t for t in tensors if t is not None]
        grads = iter(torch.autograd.grad(y, wanted, grad_y, allow_unused=True))
    return (*[next(grads) if t is not None else None for t in tensors], None, None)


_selective_scan_op.register_autograd(_backward, setup_context=_setup_context)


def selective_scan(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    dt_bias: torch.Tensor | None = None,
    dt_softplus: bool = True,
    chunk_size: int = 64,
) -> torch.Tensor:
    """Run ``brr::selective_scan``; arguments as in mamba-ssm's ``mamba_chunk_scan_combined``."""
    return _selective_scan_op(x, dt, A, B, C, D, dt_bias, dt_softplus, chunk_size)
